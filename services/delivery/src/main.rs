//! `delivery`: the delivery tier as its own process (`posthorn run delivery` is the same).

fn main() -> std::process::ExitCode {
    posthorn_backends::tier_main("delivery", posthorn_delivery::run)
}
