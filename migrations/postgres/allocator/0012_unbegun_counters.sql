-- A counter that has handed out nothing (left by an AdvanceCounter that
-- skipped nothing) made its period look begun: the period kept the start it
-- had then, whatever start_at its series was given since. Without the row,
-- the period takes its series' start_at when its first number is handed out.
DELETE FROM counters WHERE last_value = base;
