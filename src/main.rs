//! The `ds-sync` binary: everything lives in the library; see `ds_sync::cli`.

/// Every row change becomes a few short-lived allocations (decoded tuple, JSON, batch
/// buffers) made on one thread and freed on another after the POST; mimalloc handles that
/// pattern with far less time in the allocator than the system malloc (see bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ds_sync::cli::main()
}
