//! The invoice writer.
