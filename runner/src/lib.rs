//! ferry: carry a live CI session across an OS upgrade and a kexec reboot.
//!
//! Before the reboot: [`trip`] (the foreground and its detached worker).
//! After it: [`resume`]. Each step is a phase in [`phases`], recorded in the
//! run [`state`] and traced through [`telemetry`]; external commands go
//! through [`exec`].

pub mod config;
pub mod destinations;
pub mod diagnose;
pub mod exec;
pub mod filescan;
pub mod finishing;
pub mod host;
pub mod images;
pub mod install;
pub mod janitor;
pub mod journal;
pub mod next_boot;
pub mod notes;
pub mod phases;
pub mod printable;
pub mod procfs;
pub mod pull;
pub mod rehearse;
pub mod report;
pub mod resume;
pub mod secrets;
pub mod session;
pub mod shipping;
pub mod state;
pub mod table;
pub mod telemetry;
pub mod trip;
pub mod units;
pub mod volatile;
