//! Where sluice's threads run.
//!
//! A frame goes from the port task (on the async runtime's thread) to its
//! pipeline's worker thread and back to the MQTT connection: two wake-ups.
//! When the scheduler wakes each thread on another, idle core, a frame
//! costs about 1.6 times the CPU time it costs on one core (BENCHMARKS.md,
//! "One core"). By default [`packing`] keeps the threads on one core while
//! the load fits there; `--cpus` (`SLUICE_CPUS`) instead fixes the CPUs, at
//! start, for the whole process: every thread started later inherits them.

pub mod packing;

use std::fmt;
use std::str::FromStr;

use anyhow::bail;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// CPU numbers, as in `taskset -c`: `1`, `0-1`, `0,2-3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl FromStr for CpuList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |n: &str| match n.trim().parse::<usize>() {
            Ok(cpu) if cpu < CpuSet::count() => Ok(cpu),
            Ok(cpu) => Err(format!(
                "CPU {cpu} is beyond the highest this system can number ({})",
                CpuSet::count() - 1
            )),
            Err(_) => Err(format!(
                "`{n}` is not a CPU number (expected a list like 1, 0-1 or 0,2-3)"
            )),
        };
        let mut cpus = Vec::new();
        for part in text.split(',') {
            match part.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(format!("`{part}`: the range ends before it starts"));
                    }
                    cpus.extend(first..=last);
                }
                None => cpus.push(number(part)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&text.join(","))
    }
}

impl CpuList {
    /// The CPU numbers, in ascending order.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// As the affinity system calls take it.
    fn set(&self) -> nix::Result<CpuSet> {
        let mut set = CpuSet::new();
        for &cpu in &self.0 {
            set.set(cpu)?;
        }
        Ok(set)
    }
}

/// The CPUs the calling thread may use now.
pub fn allowed() -> anyhow::Result<CpuList> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok(CpuList(
        (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
    ))
}

/// Restricts this process (the calling thread and every thread it starts
/// afterwards) to `cpus`, each of which it must be allowed to use now.
pub fn keep_to(cpus: &CpuList) -> anyhow::Result<()> {
    let usable = allowed()?;
    if let Some(cpu) = cpus.0.iter().find(|cpu| !usable.0.contains(cpu)) {
        bail!("--cpus {cpus}: CPU {cpu} is not one sluice may use (it may use {usable})");
    }
    sched_setaffinity(Pid::from_raw(0), &cpus.set()?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_what_taskset_takes() {
        assert_eq!("1".parse::<CpuList>().unwrap(), CpuList(vec![1]));
        assert_eq!("0-2".parse::<CpuList>().unwrap(), CpuList(vec![0, 1, 2]));
        assert_eq!(
            "3,0-1,1".parse::<CpuList>().unwrap(),
            CpuList(vec![0, 1, 3])
        );
    }

    #[test]
    fn refuses_what_is_not_a_cpu_list() {
        let huge = format!("0-{}", usize::MAX);
        for bad in ["", "a", "1-", "2-1", "-1", "0,,1", &huge] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad:?} was accepted");
        }
    }
}
