//! `resolver`: the resolver tier as its own process (`posthorn run resolver` is the same).

fn main() -> std::process::ExitCode {
    posthorn_backends::tier_main("resolver", posthorn_resolver::run)
}
