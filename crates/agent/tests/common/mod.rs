//! The agent tests' cluster helpers live in `cairn_testkit::cluster`, shared
//! with the producer's tests.

#![allow(unused_imports)]

pub use cairn_testkit::cluster::*;
