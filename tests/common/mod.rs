//! Helpers shared by the integration tests: throwaway Kinto servers.

#![allow(dead_code)] // each test binary uses a different subset

pub mod kinto;
