//! The `ds-sync` binary: everything lives in the library; see `ds_sync::cli`.

/// Every row change becomes a few short-lived allocations (decoded tuple, JSON, batch
/// buffers) made on one thread and freed on another after the POST; mimalloc handles that
/// pattern with far less time in the allocator than the system malloc (see bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    ds_sync::cli::main()
}

/// Opts this process out of transparent huge pages. mimalloc reserves its memory in large
/// arenas and commits them eagerly on Linux; where THP is `always` (a common distribution
/// default), the first byte touched in a 2 MiB stretch makes all of it resident. The peak
/// RSS of a 1,000,000-event ingest backlog was 60-72 MB with THP and 26 MB without
/// (`ds-sync bench ingest-drain`), for the same work; ds-sync's heap is small and
/// short-lived, so huge pages buy it nothing. `MIMALLOC_ALLOW_THP=1` turns them back on.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}
