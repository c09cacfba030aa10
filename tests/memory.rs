//! meshd's release of freed memory, in a process of its own: the allocator's free lists and
//! the resident set are the whole process's, so no other test may allocate beside it.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_memory_past_the_allowance_is_given_back() {
    use meshd::memory::release_past;

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    // Blocks of 256 KiB between small ones that stay, as a burst of connections leaves its
    // buffers: once freed, the large ones cannot merge into the top of the heap and be
    // trimmed there, so the allocator keeps them. A first round raises glibc's mmap threshold
    // (to the size of an mmapped block freed), so the second comes from the heap.
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut large = Vec::new();
        for _ in 0..128 {
            large.push(vec![1u8; 256 * 1024]);
            kept.push(vec![1u8; 64]);
        }
        drop(large);
    }
    assert!(release_past(usize::MAX).is_none(), "within the allowance");
    let before = rss_kib();
    let released = release_past(1024 * 1024);
    let after = rss_kib();
    assert!(
        released.is_some_and(|free| free >= 16 * 1024 * 1024),
        "{released:?}"
    );
    assert!(
        after + 16 * 1024 <= before,
        "RSS {before} KiB before the release, {after} KiB after"
    );
    drop(kept);
}
