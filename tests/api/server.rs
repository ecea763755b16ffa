//! Shared server behaviour: reflection, health, shutdown.
