//! The reliability suite (issue 17): the canonical result whatever the order pages arrive in.

mod arrival_order;
