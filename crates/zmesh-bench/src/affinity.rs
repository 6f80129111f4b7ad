//! Thread-to-CPU pinning, so client and server threads sit on known CPUs and ratios
//! measured in one run compare like with like.
//!
//! Uses `taskset -p` on the thread id read from `/proc/thread-self`, which needs neither
//! `unsafe` nor another dependency. Failure only costs repeatability, so it is reported on
//! stderr (a bench's own output, read by whoever runs it) and otherwise ignored.

/// Pins the calling thread to `cpu` (see [`set_thread_affinity`]).
pub fn pin_current_thread(cpu: usize) {
    set_thread_affinity(&cpu.to_string());
}

/// Undoes a pin the calling thread inherited from the thread that spawned it: gives it back
/// the CPUs the process started with. Decided from the thread's own affinity; a thread that
/// is not pinned is left alone.
pub fn unpin_current_thread() {
    let Some(cpus) = process_cpus() else {
        eprintln!("bench: cannot unpin a thread (CPU list of the process unknown)");
        return;
    };
    if allowed_cpus("/proc/thread-self/status").as_deref() != Some(cpus) {
        set_thread_affinity(cpus);
    }
}

/// The CPUs the process may run on as it started; call it from `main` before pinning
/// anything so the first reading is the unpinned one.
pub fn process_cpus() -> Option<&'static str> {
    static CPUS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CPUS.get_or_init(|| allowed_cpus("/proc/self/status"))
        .as_deref()
}

/// `Cpus_allowed_list` (a `taskset -c` list) of a `/proc` status file.
fn allowed_cpus(status: &str) -> Option<String> {
    std::fs::read_to_string(status)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_owned())
        .filter(|list| !list.is_empty())
}

/// Sets the calling thread's CPUs to `cpus` (a `taskset -c` list).
pub fn set_thread_affinity(cpus: &str) {
    let pinned = std::fs::read_link("/proc/thread-self")
        .map_err(|e| e.to_string())
        .and_then(|link| {
            let tid = link
                .file_name()
                .and_then(|name| name.to_str())
                .ok_or("no thread id in /proc/thread-self")?
                .to_owned();
            let status = std::process::Command::new("taskset")
                .args(["-p", "-c", cpus, &tid])
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("taskset: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("taskset exited with {status}"))
            }
        });
    if let Err(e) = pinned {
        eprintln!("bench: cannot pin a thread to CPUs {cpus} ({e}); results may swing");
    }
}
