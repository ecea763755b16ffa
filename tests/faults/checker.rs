//! The load a fault is injected under, and the checker of its outcome: every
//! answer is recorded with its time; acknowledged numbers must never repeat
//! and must all be found afterwards. A failed call whose change may have
//! happened (the service or its database went away mid-call) is
//! indeterminate, as in a linearizability checker: it may leave a gap, never
//! a duplicate.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use numbering::{
    bench::verify::{Ack, verify},
    proto::{
        AllocateRequest, ListNumbersRequest, NumberState,
        number_allocator_client::NumberAllocatorClient,
    },
};
use tokio::{sync::watch, task::JoinHandle};
use tonic::{Code, transport::Endpoint};

use crate::helpers::PATIENCE;

/// One answered call.
#[derive(Debug, Clone)]
struct Answer {
    started: Instant,
    ended: Instant,
    outcome: Result<(i64, u32), Code>,
    /// The message of a failure.
    message: String,
}

/// Clients calling `Allocate` in a loop for one tenant, each on its own
/// connection, until stopped.
pub struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    acknowledged: watch::Receiver<usize>,
    failures: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients on `url`, each call with `deadline`.
    pub fn start(url: &str, clients: usize, deadline: Duration) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (count, acknowledged) = watch::channel(0);
        let count = Arc::new(count);
        let (failed, failures) = watch::channel(0);
        let failed = Arc::new(failed);
        let (stop, stopping) = watch::channel(false);
        let clients = (0..clients)
            .map(|i| {
                let channel = Endpoint::from_shared(url.to_owned())
                    .unwrap()
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy();
                let mut client = NumberAllocatorClient::new(channel);
                let (answers, count, failed, stopping) = (
                    answers.clone(),
                    count.clone(),
                    failed.clone(),
                    stopping.clone(),
                );
                let asked = 1 + u32::try_from(i % 3).unwrap();
                tokio::spawn(async move {
                    while !*stopping.borrow() {
                        let started = Instant::now();
                        let mut request = tonic::Request::new(AllocateRequest {
                            tenant_id: "acme".into(),
                            count: asked,
                            ..AllocateRequest::default()
                        });
                        request.set_timeout(deadline);
                        let (outcome, message) = match client.allocate(request).await {
                            Ok(response) => {
                                let numbers = response.into_inner().numbers;
                                let range =
                                    (numbers[0].value, u32::try_from(numbers.len()).unwrap());
                                (Ok(range), String::new())
                            }
                            Err(status) => (Err(status.code()), status.message().to_owned()),
                        };
                        let outcome_failed = outcome.is_err();
                        answers.lock().unwrap().push(Answer {
                            started,
                            ended: Instant::now(),
                            outcome,
                            message,
                        });
                        if outcome_failed {
                            failed.send_modify(|n| *n += 1);
                            // Not a busy loop while the service is away.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        } else {
                            count.send_modify(|n| *n += 1);
                        }
                    }
                })
            })
            .collect();
        Self {
            answers,
            acknowledged,
            failures,
            stop,
            clients,
        }
    }

    /// Waits until `more` calls beyond those acknowledged so far are
    /// acknowledged.
    pub async fn wait_for_acks(&mut self, more: usize) {
        assert!(
            self.acks_within(more).await,
            "{more} more calls were not acknowledged in {PATIENCE:?}: {}",
            self.failures_since(Duration::from_secs(5))
        );
    }

    /// Waits until the load has recovered from every one of `faults` (see
    /// [`recovery`]), looking again each time `more` calls are acknowledged:
    /// a call the last fault left hanging until its deadline fails after
    /// the load has gone on, and only calls started after it count.
    pub async fn wait_for_recovery(&mut self, faults: &[Instant], more: usize) {
        let recovered = tokio::time::timeout(PATIENCE, async {
            loop {
                self.wait_for_acks(more).await;
                let timed: Vec<Timed> = self
                    .answers
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|a| (a.started, a.ended, a.outcome.is_ok()))
                    .collect();
                if recovery(&timed, faults).is_some() {
                    return;
                }
            }
        })
        .await;
        assert!(
            recovered.is_ok(),
            "not recovered from every fault in {PATIENCE:?}: {}",
            self.failures_since(Duration::from_secs(5))
        );
    }

    /// Whether `more` calls beyond those acknowledged so far are acknowledged
    /// within the suite's patience.
    pub async fn acks_within(&mut self, more: usize) -> bool {
        let target = *self.acknowledged.borrow() + more;
        tokio::time::timeout(PATIENCE, self.acknowledged.wait_for(|n| *n >= target))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// The failures of the calls that ended in the last `window`, by code,
    /// each with its last message: what a stalled load is seeing.
    pub fn failures_since(&self, window: Duration) -> String {
        let since = Instant::now().checked_sub(window);
        let mut codes: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let answers = self.answers.lock().unwrap();
        for answer in answers
            .iter()
            .filter(|answer| since.is_none_or(|since| answer.ended >= since))
        {
            if let Err(code) = answer.outcome {
                let entry = codes.entry(format!("{code:?}")).or_default();
                entry.0 += 1;
                entry.1.clone_from(&answer.message);
            }
        }
        format!(
            "{} calls answered in the last {window:?}; failures by code {codes:?}",
            answers
                .iter()
                .filter(|answer| since.is_none_or(|since| answer.ended >= since))
                .count()
        )
    }

    /// How many calls have failed so far.
    pub fn failed(&self) -> usize {
        *self.failures.borrow()
    }

    /// Waits until `more` calls beyond those failed so far have failed.
    pub async fn wait_for_failures(&mut self, more: usize) {
        let target = *self.failures.borrow() + more;
        tokio::time::timeout(PATIENCE, self.failures.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("{more} more calls did not fail in {PATIENCE:?}"))
            .unwrap();
    }

    /// Stops the clients and returns what they saw.
    pub async fn stop(self) -> Outcomes {
        self.stop.send_replace(true);
        for client in self.clients {
            client.await.unwrap();
        }
        Outcomes(self.answers.lock().unwrap().clone())
    }
}

/// Everything a load's clients saw.
pub struct Outcomes(Vec<Answer>);

/// Codes of a call that was refused before anything changed.
fn changed_nothing(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
    )
}

impl Outcomes {
    /// What two loads saw, as one.
    #[allow(dead_code)] // used by the fault suite
    pub fn merge(mut self, other: Self) -> Self {
        self.0.extend(other.0);
        self
    }

    /// How many calls started at or after `moment` failed.
    #[allow(dead_code)] // used by the failover suite
    pub fn failures_started_after(&self, moment: Instant) -> usize {
        self.0
            .iter()
            .filter(|answer| answer.started >= moment && answer.outcome.is_err())
            .count()
    }

    /// The numbers acknowledged, as the verifier takes them.
    fn acks(&self) -> Vec<Ack> {
        self.0
            .iter()
            .filter_map(|answer| answer.outcome.ok())
            .map(|(first, count)| Ack {
                series: 0,
                first,
                count,
            })
            .collect()
    }

    /// The report of a fault, recovered from after each of `faults` (the
    /// moment it was injected, or for a fault that lasts, the moment it
    /// ended): duplicates among
    /// the acknowledged numbers, and those `allocator` no longer knows as
    /// issued (missing).
    pub async fn check(
        &self,
        fault: &str,
        faults: &[Instant],
        allocator: &mut NumberAllocatorClient<tonic::transport::Channel>,
    ) -> Report {
        let acks = self.acks();
        let verification = verify(&acks, false);
        let issued = issued_numbers(allocator).await;
        let missing = acks
            .iter()
            .flat_map(|ack| ack.first..ack.first + i64::from(ack.count))
            .filter(|number| !issued.contains(number))
            .count() as u64;
        let mut codes = BTreeMap::new();
        let (mut failed, mut indeterminate) = (0, 0);
        for answer in &self.0 {
            if let Err(code) = answer.outcome {
                codes
                    .entry(format!("{code:?}"))
                    .or_insert((0, answer.message.clone()))
                    .0 += 1;
                if changed_nothing(code) {
                    failed += 1;
                } else {
                    indeterminate += 1;
                }
            }
        }
        let timed: Vec<Timed> = self
            .0
            .iter()
            .map(|a| (a.started, a.ended, a.outcome.is_ok()))
            .collect();
        let recovery = recovery(&timed, faults);
        let longest_failure = self
            .0
            .iter()
            .filter(|a| a.outcome.is_err())
            .map(|a| a.ended - a.started)
            .max()
            .unwrap_or_default();
        let longest_call = self
            .0
            .iter()
            .map(|a| a.ended - a.started)
            .max()
            .unwrap_or_default();
        Report {
            fault: fault.to_owned(),
            longest_failure,
            longest_call,
            acknowledged: acks.len(),
            numbers: verification.numbers,
            failed,
            indeterminate,
            duplicates: verification.duplicate_count,
            missing,
            codes,
            recovery,
        }
    }
}

/// One call's times and whether it was acknowledged.
pub type Timed = (Instant, Instant, bool);

/// The longest, over `faults` (each the moment a fault was injected, or for
/// one that lasts, the moment it ended), from a fault to the first
/// acknowledged call started after the last failure it caused (before the
/// next fault): zero where no call failed; none if a fault was never
/// recovered from.
pub fn recovery(calls: &[Timed], faults: &[Instant]) -> Option<Duration> {
    faults
        .iter()
        .enumerate()
        .map(|(i, &fault)| {
            let next = faults.get(i + 1).copied();
            let last_failure = calls
                .iter()
                .filter(|(_, ended, ok)| !ok && *ended >= fault && next.is_none_or(|n| *ended < n))
                .map(|(_, ended, _)| *ended)
                .max();
            let Some(last_failure) = last_failure else {
                return Some(Duration::ZERO);
            };
            calls
                .iter()
                .filter(|(started, _, ok)| *ok && *started >= last_failure)
                .map(|(_, ended, _)| *ended - fault)
                .min()
        })
        .collect::<Option<Vec<_>>>()
        .map(|times| times.into_iter().max().unwrap_or_default())
}

/// Every number of the tenant's series that the allocator holds as issued,
/// read page by page.
async fn issued_numbers(
    allocator: &mut NumberAllocatorClient<tonic::transport::Channel>,
) -> HashSet<i64> {
    let mut issued = HashSet::new();
    let mut page_token = String::new();
    loop {
        let page = allocator
            .list_numbers(ListNumbersRequest {
                tenant_id: "acme".into(),
                state: NumberState::Issued.into(),
                page_size: 1000,
                page_token,
                ..ListNumbersRequest::default()
            })
            .await
            .expect("list the issued numbers")
            .into_inner();
        issued.extend(page.records.iter().map(|record| record.number));
        if page.next_page_token.is_empty() {
            return issued;
        }
        page_token = page.next_page_token;
    }
}

/// One fault's figures, printed as a row.
#[derive(Debug)]
pub struct Report {
    pub fault: String,
    pub acknowledged: usize,
    pub numbers: u64,
    pub failed: usize,
    pub indeterminate: usize,
    pub duplicates: u64,
    pub missing: u64,
    /// Failures by code, each with the message of its first.
    pub codes: BTreeMap<String, (usize, String)>,
    /// The longest a failed call took to answer.
    pub longest_failure: Duration,
    /// The longest any call took to answer.
    pub longest_call: Duration,
    /// The longest, over the injections, from a fault to the first
    /// acknowledged call started after it; none if one never recovered.
    pub recovery: Option<Duration>,
}

impl Report {
    /// Prints the row and asserts the promise: no duplicate, nothing
    /// missing, recovered from every injection.
    pub fn print_and_check(&self) {
        println!("{self}");
        assert_eq!(self.duplicates, 0, "numbers acknowledged twice: {self}");
        assert_eq!(self.missing, 0, "acknowledged numbers missing: {self}");
        assert!(self.recovery.is_some(), "did not recover: {self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fault: {} | acknowledged {} calls ({} numbers) | failed {} | indeterminate {} | \
             duplicates {} | acknowledged missing {} | recovery {} | longest call {:.2}s, failed {:.2}s | \
             failures by code {:?}",
            self.fault,
            self.acknowledged,
            self.numbers,
            self.failed,
            self.indeterminate,
            self.duplicates,
            self.missing,
            self.recovery.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.2}s", d.as_secs_f64())
            ),
            self.longest_call.as_secs_f64(),
            self.longest_failure.as_secs_f64(),
            self.codes,
        )
    }
}
