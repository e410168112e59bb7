//! A program run outside any governed cgroup, in a test's namespace: a
//! local deputy or a process the agent tries to take over.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
};

use crate::netns::Netns;

/// Debian's Python, which any user can run (`python3` on PATH may be a
/// shim in root's home).
pub const PYTHON: &str = "/usr/bin/python3";

/// A Python program run outside the governed cgroup (in `ns`), as `uid`,
/// that prints one line when ready; killed on drop.
pub struct Outside(pub Child);

impl Outside {
    /// Starts `program` and returns it with the first line it printed.
    pub fn start(ns: &Netns, uid: u32, program: &str) -> (Outside, String) {
        let id = uid.to_string();
        let mut child = ns
            .command("setpriv")
            .args(["--reuid", &id, "--regid", &id, "--clear-groups"])
            .args([PYTHON, "-c", program])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        (Outside(child), line.trim().to_string())
    }

    /// The next line it printed (empty when it ended without one).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let _ = BufReader::new(self.0.stdout.as_mut().unwrap()).read_line(&mut line);
        line.trim().to_string()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
