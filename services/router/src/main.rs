//! `router`: the router tier as its own process (`posthorn run router` is the same).

fn main() -> std::process::ExitCode {
    posthorn_backends::tier_main("router", posthorn_router::run)
}
