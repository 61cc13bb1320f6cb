//! Keeping the service's resident memory small on glibc: one malloc arena for all threads rather than
//! eight per core, and freed memory handed back to the kernel after the large transient work (a pass, a
//! gauge refresh) instead of being kept for a peak that comes back only every few seconds.
//!
//! Deliberately not here: anything that changes what is allocated; elsewhere no code depends on this.

/// One glibc malloc arena (the service's threads mostly wait; contention is not its cost). Call before the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Return free heap memory to the kernel (glibc's `malloc_trim`); a no-op elsewhere.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator holds for live allocations, and free bytes it keeps (glibc's `mallinfo2`), for the
/// debug log after a trim.
pub fn heap() -> Option<(usize, usize)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd, info.fordblks))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
