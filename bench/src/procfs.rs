//! CPU time, memory and context switches of a process, from
//! `/proc/<pid>/stat`, `/proc/<pid>/status` and `/proc/<pid>/task/*/status`,
//! and evicting a file from the page cache.

use anyhow::{Context as _, Result, bail};

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime of every thread, living or exited, in seconds.
    pub cpu_secs: f64,
    /// Resident set size now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started (VmHWM), KiB.
    pub hwm_kib: u64,
    /// The anonymous part of VmRSS (heap, stacks, relocated data), KiB.
    pub rss_anon_kib: u64,
    /// The file-backed part (the binary's and libraries' pages), KiB.
    pub rss_file_kib: u64,
    /// Voluntary + involuntary context switches of the threads alive now
    /// (see [`context_switches`]); 0 if unreadable.
    pub context_switches: u64,
}

/// Drops `path`'s clean pages from the page cache (after writing back dirty
/// ones), so that the next process mapping it reads it from disk, as after
/// a reboot. A process's file-backed RSS depends on what is cached: on a
/// page fault the kernel also maps the cached pages around it
/// (fault-around, by folio), so the same binary maps a different number of
/// pages when the build left it in the cache than when it is read on
/// demand. Pages another process has mapped stay.
pub fn evict_from_page_cache(path: &std::path::Path) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    // SAFETY: a valid open descriptor; the advice has no memory effects.
    let rc =
        unsafe { nix::libc::posix_fadvise(file.as_raw_fd(), 0, 0, nix::libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!(
            "posix_fadvise(DONTNEED) on {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(())
}

/// Clock ticks per second for `/proc/<pid>/stat`'s times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Reads `pid`'s counters.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did the process exit?)"))?;
    let cpu_secs = parse_cpu_ticks(&stat)
        .with_context(|| format!("unexpected /proc/{pid}/stat: {stat}"))? as f64
        / clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(ProcSample {
        cpu_secs,
        rss_kib: status_number(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_number(&status, "VmHWM:").unwrap_or(0),
        rss_anon_kib: status_number(&status, "RssAnon:").unwrap_or(0),
        rss_file_kib: status_number(&status, "RssFile:").unwrap_or(0),
        context_switches: context_switches(pid),
    })
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` summed over
/// every thread in `/proc/<pid>/task`: the process's own `status` counts
/// only its main thread. A thread that exited is no longer listed, so its
/// switches are lost and a delta between two readings undercounts (or
/// would be negative); a thread that exits while the directory is read is
/// skipped. 0 if the directory cannot be read.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            status_number(&status, "voluntary_ctxt_switches:").unwrap_or(0)
                + status_number(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0)
        })
        .sum()
}

/// CPU seconds (utime + stime) of `pid`'s threads alive now, summed by
/// thread name (`comm`: tokio's workers share one). A thread that exits
/// takes its time with it; one that exits while the directory is read is
/// skipped.
pub fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.filter_map(|task| task.ok()) {
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue;
        };
        if let Ok(ticks) = parse_cpu_ticks(&stat) {
            *by_name.entry(name.trim().to_owned()).or_insert(0.0) += ticks as f64 / clock_ticks();
        }
    }
    by_name
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field
/// 2) is in parentheses and may contain spaces, so fields are counted from
/// the last `)`.
fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    let Some(close) = stat.rfind(')') else {
        bail!("no `)` after the command name");
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let field = |n: usize| -> Result<u64> {
        let text = fields.get(n - 3).context("too few fields")?;
        text.parse::<u64>()
            .with_context(|| format!("field {n} = {text:?} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// The number on a `Key:   1234 kB` (sizes, in KiB) or `Key:   1234`
/// (counts) line of a `status` file.
fn status_number(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_command_name_containing_spaces_and_parens() {
        let stat = "4242 (node (red) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 11 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 325);
    }

    #[test]
    fn counts_cpu_by_thread_name() {
        let spin = std::thread::Builder::new()
            .name("procfs-spin".into())
            .spawn(|| {
                // Spin until this thread's own stat shows two ticks, so the
                // figure does not depend on how loaded the machine is.
                let own_ticks = || {
                    std::fs::read_to_string("/proc/thread-self/stat")
                        .ok()
                        .and_then(|stat| parse_cpu_ticks(&stat).ok())
                        .unwrap_or(0)
                };
                let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while own_ticks() < 2 && std::time::Instant::now() < give_up {}
                cpu_by_thread(std::process::id())
            })
            .unwrap();
        let by_thread = spin.join().unwrap();
        let two_ticks = 2.0 / clock_ticks();
        assert!(
            by_thread
                .get("procfs-spin")
                .is_some_and(|&secs| secs >= two_ticks),
            "{by_thread:?}"
        );
    }

    #[test]
    fn reads_its_own_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        // RssShmem is the rest of VmRSS.
        assert!(s.rss_anon_kib > 0 && s.rss_file_kib > 0, "{s:?}");
        assert!(s.rss_anon_kib + s.rss_file_kib <= s.rss_kib, "{s:?}");
    }

    #[test]
    fn counts_context_switches_of_its_own_threads() {
        // Each sleep blocks, a voluntary switch of this thread, which is
        // still alive (and so listed in /proc/self/task) when sampled.
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Joining blocks this thread too; the joined thread's own switches
        // are gone with it.
        std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(1)))
            .join()
            .unwrap();
        let s = sample(std::process::id()).unwrap();
        assert!(s.context_switches >= 5, "{s:?}");
    }

    #[test]
    fn reads_switch_counts_from_a_status_file() {
        let status =
            "Name:\tsluice\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(status_number(status, "voluntary_ctxt_switches:"), Some(120));
        assert_eq!(
            status_number(status, "nonvoluntary_ctxt_switches:"),
            Some(7)
        );
    }
}
