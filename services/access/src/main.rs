//! `access`: the access tier as its own process (`posthorn run access` is the same).

fn main() -> std::process::ExitCode {
    posthorn_backends::tier_main("access", posthorn_access::run)
}
