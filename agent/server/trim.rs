//! Freed memory handed back to the system after a large body.
//!
//! A storm body is parsed into tens of megabytes of short-lived
//! allocations on whichever threads run the handler and the pipeline.
//! glibc keeps what they free: measured (debug build), one 10,000-alert
//! and one 18,000-alert body left the agent's RSS 110 MB above idle with
//! 3.6 MB of it in use, spread over four arenas. Two glibc behaviours do
//! it. Its mmap threshold is dynamic: freeing the mmapped 6 MB body buffer
//! raises the threshold (and the trim threshold, to twice that), so later
//! large buffers come from the arenas and the arenas' free tops are not
//! trimmed below 13 MB. And free memory inside an arena is only returned
//! by `malloc_trim`. So [`tune_allocator`] pins both thresholds at glibc's
//! defaults (128 KiB) at start, and [`run`] calls `malloc_trim(0)` once
//! the queue has stayed empty for two checks a second apart after a large
//! body, so the pipeline's share is freed too; it is not called otherwise.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Http;

/// Whether a trim is due.
#[derive(Debug, Default)]
pub(super) struct Trim {
    wanted: AtomicBool,
}

impl Trim {
    /// A large body was handled: trim once the pipeline is idle.
    pub(super) fn after_large_body(&self) {
        self.wanted.store(true, Ordering::Release);
    }
}

/// Trims when wanted and the queue has been empty for two checks.
pub(super) async fn run(http: Arc<Http>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_checks = 0;
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = tick.tick() => {}
        }
        let m = &http.shared.metrics;
        if !http.trim.wanted.load(Ordering::Acquire) {
            continue;
        }
        if m.queue_depth.get() > 0 {
            idle_checks = 0;
            continue;
        }
        idle_checks += 1;
        if idle_checks < 2 {
            continue;
        }
        idle_checks = 0;
        http.trim.wanted.store(false, Ordering::Release);
        let before = rss_kb();
        let _ = tokio::task::spawn_blocking(release_free_memory).await;
        tracing::debug!(
            rss_before_kb = before,
            rss_after_kb = rss_kb(),
            "returned freed memory to the system after a large notification"
        );
    }
}

/// This process's resident set in kB (0 where /proc is not there).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Pins glibc's mmap and trim thresholds at their defaults (128 KiB), which
/// turns off their growth after a large buffer is freed: large buffers stay
/// mmapped (returned when freed) and arena tops over 128 KiB are trimmed.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only sets allocator
    // parameters; it is called once at start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while
    // it returns that arena's free pages, so it is safe beside other threads.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}
