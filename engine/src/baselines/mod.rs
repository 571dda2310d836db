//! Baselines a learned model must beat to be worth its weights: continuators that know nothing
//! but the prime.
//!
//! - [`markov`]: a variable-order Markov continuator learned from the prime alone, after François
//!   Pachet's Continuator (2003), the system this project is named after.
//! - [`repeat`]: play the last bars of the prime again, the cheapest way to sound "in style".
//!
//! Both take and return notes on one timeline shared with the prime (onsets from the prime's
//! first bar line), and place notes only where the prime's notes lie on the grid, so their
//! output can be written as tokens whenever the prime can.

pub mod markov;
pub mod repeat;

pub use markov::MarkovContinuator;
pub use repeat::repeat_last_bars;
