//! Processor time over a run, by party: the load generator itself, the
//! services it started, PostgreSQL's processes (any named `postgres` on the
//! machine), and the rest of the machine (the kernel's own threads, anything
//! else running), read from `/proc`. On a machine of two cores shared by all
//! of them, where a call's time goes decides what any change can gain.

use std::{collections::HashMap, fmt, time::Duration};

/// The processor time counters at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The whole machine's busy and idle time, over every core, read before
    /// the processes' counters and again after them: a run's machine time
    /// is taken from the first reading of its start to the second of its
    /// end, so that it spans every process's time however long the reads
    /// take (scanning every `postgres` process is slow on a busy machine).
    machine: Option<Machine>,
    machine_after: Option<Machine>,
    /// This process's own time.
    own: Option<Duration>,
    /// The time of each watched process, in the order given.
    watched: Vec<Option<Duration>>,
    /// The time of each process named `postgres`, by process id.
    database: Option<HashMap<i32, Duration>>,
}

#[derive(Debug, Clone, Copy)]
struct Machine {
    busy: Duration,
    idle: Duration,
}

impl Sample {
    /// The counters now, for this process, each of `pids`, PostgreSQL and
    /// the machine. A counter that cannot be read (not Linux, a process
    /// gone) is left out.
    #[must_use]
    pub fn now(pids: &[Option<u32>]) -> Self {
        let machine = read::machine();
        let own = read::process(None);
        let watched = pids
            .iter()
            .map(|pid| pid.and_then(|pid| read::process(Some(pid))))
            .collect();
        let database = read::named("postgres");
        Self {
            machine,
            machine_after: read::machine(),
            own,
            watched,
            database,
        }
    }

    /// The time used since `start`, by party.
    #[must_use]
    pub fn since(&self, start: &Self) -> ProcessorTime {
        let elapsed =
            |now: Option<Duration>, then: Option<Duration>| Some(now?.saturating_sub(then?));
        let own = elapsed(self.own, start.own);
        let watched: Vec<_> = self
            .watched
            .iter()
            .zip(&start.watched)
            .map(|(now, then)| elapsed(*now, *then))
            .collect();
        let (busy, idle) = match (self.machine_after, start.machine) {
            (Some(now), Some(then)) => (
                Some(now.busy.saturating_sub(then.busy)),
                Some(now.idle.saturating_sub(then.idle)),
            ),
            _ => (None, None),
        };
        // A process started since counts from nothing; one ended since is
        // not counted (the database's connections outlive a run).
        let database = match (&self.database, &start.database) {
            (Some(now), Some(then)) => Some(
                now.iter()
                    .map(|(pid, time)| {
                        time.saturating_sub(then.get(pid).copied().unwrap_or_default())
                    })
                    .sum(),
            ),
            _ => None,
        };
        // What the machine spent that no party did.
        let rest = busy.and_then(|busy| {
            let parties = own? + database? + watched.iter().copied().sum::<Option<Duration>>()?;
            Some(busy.saturating_sub(parties))
        });
        ProcessorTime {
            own,
            watched,
            database,
            rest,
            idle,
            busy,
        }
    }
}

/// Processor time used over a run, by party.
#[derive(Debug, Clone, Default)]
pub struct ProcessorTime {
    /// The load generator's own.
    pub own: Option<Duration>,
    /// Each watched process's.
    pub watched: Vec<Option<Duration>>,
    /// PostgreSQL's processes'.
    pub database: Option<Duration>,
    /// The machine's busy time that none of the above used.
    pub rest: Option<Duration>,
    /// The machine's idle time, over every core.
    pub idle: Option<Duration>,
    /// The machine's busy time, over every core.
    pub busy: Option<Duration>,
}

impl ProcessorTime {
    /// The idle share of the machine's time.
    #[must_use]
    pub fn idle_share(&self) -> Option<f64> {
        let (idle, busy) = (self.idle?, self.busy?);
        let total = (idle + busy).as_secs_f64();
        (total > 0.0).then(|| idle.as_secs_f64() / total)
    }

    /// Adds `other`'s time, party by party (the same parties).
    pub fn add(&mut self, other: &Self) {
        let sum = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        self.own = sum(self.own, other.own);
        for (mine, theirs) in self.watched.iter_mut().zip(&other.watched) {
            *mine = sum(*mine, *theirs);
        }
        self.database = sum(self.database, other.database);
        self.rest = sum(self.rest, other.rest);
        self.idle = sum(self.idle, other.idle);
        self.busy = sum(self.busy, other.busy);
    }

    /// This time divided by `calls`, as a line naming the parties: the load
    /// generator, each of `names` (the watched processes), PostgreSQL and the
    /// rest.
    #[must_use]
    pub fn per_call<'a>(&'a self, names: &'a [&'a str], calls: u64) -> PerCall<'a> {
        PerCall {
            time: self,
            names,
            calls,
        }
    }
}

/// A workload's processor time per call and how busy it kept the cores:
/// what its share of a no-op ceiling on the same cores can reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallCost {
    /// The machine's busy time per call, in µs: every party's.
    pub micros: f64,
    /// The share of the cores' time that was busy.
    pub busy: f64,
}

impl CallCost {
    /// The time of `time` over `calls`, if the machine's counters were read
    /// and there was a call.
    #[must_use]
    pub fn of(time: &ProcessorTime, calls: u64) -> Option<Self> {
        if calls == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)] // calls of a few runs, far below 2^52
        let calls = calls as f64;
        Some(Self {
            micros: time.busy?.as_secs_f64() * 1e6 / calls,
            busy: 1.0 - time.idle_share()?,
        })
    }

    /// This workload's calls a second over `ceiling`'s, were no core left
    /// idle, each of its calls counting as `calls_each` of the ceiling's (a
    /// `Reserve` + `Confirm` pair as two). The ceiling makes `busy ÷ micros`
    /// calls per µs of a core, this workload `1 ÷ micros` with none idle; its
    /// measured share is this times its own busy share.
    #[must_use]
    pub fn reach(self, ceiling: Self, calls_each: f64) -> f64 {
        calls_each * ceiling.micros / (ceiling.busy * self.micros)
    }

    /// This cost with `spent` µs of each call's spent as `instead`.
    #[must_use]
    pub fn with(self, spent: f64, instead: f64) -> Self {
        Self {
            micros: self.micros - spent + instead,
            ..self
        }
    }
}

/// [`ProcessorTime::per_call`], printed.
pub struct PerCall<'a> {
    time: &'a ProcessorTime,
    names: &'a [&'a str],
    calls: u64,
}

impl PerCall<'_> {
    /// Microseconds per call of `time`, if it was read and there was a call.
    #[must_use]
    pub fn micros(&self, time: Option<Duration>) -> Option<f64> {
        if self.calls == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)] // calls of one run, far below 2^52
        let calls = self.calls as f64;
        time.map(|time| time.as_secs_f64() * 1e6 / calls)
    }
}

impl fmt::Display for PerCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |time| match self.micros(time) {
            Some(micros) => format!("{micros:.0} µs"),
            None => "unknown".to_owned(),
        };
        write!(f, "load generator {}", show(self.time.own))?;
        for (name, time) in self.names.iter().zip(&self.time.watched) {
            write!(f, ", {name} {}", show(*time))?;
        }
        write!(
            f,
            // Whatever database the services use: any such process counts.
            ", processes named postgres {}, the rest of the machine {}",
            show(self.time.database),
            show(self.time.rest)
        )?;
        match self.time.idle_share() {
            Some(idle) => write!(f, "; idle {:.0}%", idle * 100.0),
            None => write!(f, "; idle unknown"),
        }
    }
}

#[cfg(target_os = "linux")]
mod read {
    use std::{collections::HashMap, time::Duration};

    use procfs::{CurrentSI, KernelStats, process::Process};

    use super::Machine;

    fn ticks(ticks: u64) -> Duration {
        let per_second = procfs::ticks_per_second().max(1);
        Duration::from_secs(ticks / per_second)
            + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
    }

    /// The machine's busy and idle time over every core.
    pub(super) fn machine() -> Option<Machine> {
        let total = KernelStats::current().ok()?.total;
        // Time stolen by a hypervisor is neither busy here nor idle.
        let busy = total.user
            + total.nice
            + total.system
            + total.irq.unwrap_or(0)
            + total.softirq.unwrap_or(0);
        let idle = total.idle + total.iowait.unwrap_or(0);
        Some(Machine {
            busy: ticks(busy),
            idle: ticks(idle),
        })
    }

    /// The time of each process named `name`, by process id.
    pub(super) fn named(name: &str) -> Option<HashMap<i32, Duration>> {
        let processes = procfs::process::all_processes().ok()?;
        Some(
            processes
                .filter_map(|process| process.ok()?.stat().ok())
                .filter(|stat| stat.comm == name)
                .map(|stat| (stat.pid, ticks(stat.utime + stat.stime)))
                .collect(),
        )
    }

    /// A process's time, every thread's, user and system; this process's
    /// without `pid`.
    pub(super) fn process(pid: Option<u32>) -> Option<Duration> {
        let process = match pid {
            Some(pid) => Process::new(i32::try_from(pid).ok()?),
            None => Process::myself(),
        }
        .ok()?;
        let stat = process.stat().ok()?;
        Some(ticks(stat.utime + stat.stime))
    }
}

#[cfg(not(target_os = "linux"))]
mod read {
    use std::{collections::HashMap, time::Duration};

    use super::Machine;

    pub(super) fn machine() -> Option<Machine> {
        None
    }

    pub(super) fn process(_pid: Option<u32>) -> Option<Duration> {
        None
    }

    pub(super) fn named(_name: &str) -> Option<HashMap<i32, Duration>> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::{
        process::{Child, Command},
        time::{Duration, Instant},
    };

    use super::*;

    /// A child process that spins until killed.
    struct Spinner(Child);

    impl Drop for Spinner {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Polls until `enough` holds of the time used since `start`; fails
    /// after a minute.
    fn until(start: &Sample, pids: &[Option<u32>], enough: impl Fn(&ProcessorTime) -> bool) {
        let deadline = Instant::now() + Duration::from_mins(1);
        while !enough(&Sample::now(pids).since(start)) {
            assert!(Instant::now() < deadline, "never used the time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_watched_process_time_is_its_own_and_the_rest_is_what_no_party_used() {
        let spinner = Spinner(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap(),
        );
        let pids = [Some(spinner.0.id())];
        let (start, began) = (Sample::now(&pids), Instant::now());
        until(&start, &pids, |spent| {
            spent.watched[0].unwrap() >= Duration::from_millis(200)
        });
        let spent = Sample::now(&pids).since(&start);
        let wall = began.elapsed();
        drop(spinner);

        let (own, child) = (spent.own.unwrap(), spent.watched[0].unwrap());
        let (busy, rest) = (spent.busy.unwrap(), spent.rest.unwrap());
        let database = spent.database.unwrap();
        // One thread spinning cannot use more than the wall time (a tick of
        // rounding aside). This process's time is every test's of it.
        assert!(child >= Duration::from_millis(200), "{spent:?}");
        assert!(
            child <= wall + Duration::from_millis(20),
            "{spent:?} in {wall:?}"
        );
        assert!(busy + Duration::from_millis(20) >= own + child, "{spent:?}");
        assert_eq!(
            rest,
            busy.saturating_sub(own + child + database),
            "{spent:?}"
        );
        assert!(
            spent
                .idle_share()
                .is_some_and(|idle| (0.0..1.0).contains(&idle))
        );
    }

    #[test]
    fn this_process_time_is_its_own() {
        let start = Sample::now(&[]);
        let from = start.clone();
        let spinning = std::thread::spawn(move || {
            let mut spin = 0_u64;
            while Sample::now(&[]).since(&from).own.unwrap() < Duration::from_millis(200) {
                for i in 0..100_000 {
                    spin = std::hint::black_box(spin.wrapping_add(i));
                }
            }
        });
        until(&start, &[], |spent| {
            spent.own.unwrap() >= Duration::from_millis(200)
        });
        spinning.join().unwrap();
        let spent = Sample::now(&[]).since(&start);
        assert!(spent.watched.is_empty());
        assert!(
            spent.busy.unwrap() + Duration::from_millis(20) >= spent.own.unwrap(),
            "{spent:?}"
        );
    }

    #[test]
    fn a_share_reaches_the_ceilings_cost_over_its_own_with_no_core_idle() {
        let ms = |ms| Some(Duration::from_millis(ms));
        // 1,000 health checks at 34 µs each with 3% of the cores idle; 1,000
        // calls at 64 µs with 17% idle, 24 µs of them the service's, which a
        // health check costs 14 µs.
        let noop = ProcessorTime {
            busy: ms(34),
            idle: Some(Duration::from_micros(34_000 * 3 / 97)),
            ..ProcessorTime::default()
        };
        let call = ProcessorTime {
            busy: ms(64),
            idle: Some(Duration::from_micros(64_000 * 17 / 83)),
            ..ProcessorTime::default()
        };
        let (noop, call) = (
            CallCost::of(&noop, 1000).unwrap(),
            CallCost::of(&call, 1000).unwrap(),
        );
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
        assert!(
            close(noop.micros, 34.0) && close(noop.busy, 0.97),
            "{noop:?}"
        );
        assert!(
            close(call.micros, 64.0) && close(call.busy, 0.83),
            "{call:?}"
        );
        // 34 ÷ (0.97 × 64), and the share measured is that at 83% busy.
        assert!(
            close(call.reach(noop, 1.0), 0.5477),
            "{}",
            call.reach(noop, 1.0)
        );
        assert!(close(call.reach(noop, 1.0) * call.busy, 0.4546));
        // 34 ÷ (0.97 × 54) with the service at a health check's cost.
        let at_noop = call.with(24.0, 14.0);
        assert!(close(at_noop.reach(noop, 1.0), 0.6491));
        // A pair counts as two of the ceiling's calls.
        assert!(close(call.reach(noop, 2.0), 2.0 * 0.5477));
        assert_eq!(CallCost::of(&ProcessorTime::default(), 1000), None);
    }

    #[test]
    fn per_call_time_names_every_party() {
        let ms = |ms| Some(Duration::from_millis(ms));
        let mut time = ProcessorTime {
            own: ms(100),
            watched: vec![ms(300), None],
            database: ms(50),
            rest: ms(150),
            idle: ms(400),
            busy: ms(600),
        };
        time.add(&time.clone());
        assert_eq!(
            time.per_call(&["allocator", "writer"], 1000).to_string(),
            "load generator 200 µs, allocator 600 µs, writer unknown, \
             processes named postgres 100 µs, the rest of the machine 300 µs; idle 40%"
        );
    }
}
