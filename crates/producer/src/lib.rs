//! Client library for writing records to Cairn agents.
//!
//! Not built yet: it needs the agent's Produce API (issue 4) and arrives with
//! issue 5. Until then the `cairn-producer` binary answers every command with
//! "unimplemented" and a non-zero exit.
