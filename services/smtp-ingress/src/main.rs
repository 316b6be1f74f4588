//! `smtp-ingress`: the smtp-ingress tier as its own process (`posthorn run smtp-ingress` is the same).

fn main() -> std::process::ExitCode {
    posthorn_backends::tier_main("smtp-ingress", posthorn_smtp_ingress::run)
}
