//! AWS Signature Version 4 for the one bodiless request the S3 readiness
//! probe sends (HeadBucket), so the probe checks that the server answers a
//! real, authenticated S3 call.

use ring::{digest, hmac};

const REGION: &str = "us-east-1";

/// Headers (besides `Host: {host}`) that sign `method path` with no query
/// and an empty body.
pub(crate) fn sign(
    method: &str,
    host: &str,
    path: &str,
    access_key: &str,
    secret_key: &str,
) -> Vec<(String, String)> {
    sign_at(
        method,
        host,
        path,
        access_key,
        secret_key,
        &chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
    )
}

fn sign_at(
    method: &str,
    host: &str,
    path: &str,
    access_key: &str,
    secret_key: &str,
    amz_date: &str,
) -> Vec<(String, String)> {
    let day = &amz_date[..8];
    let payload = hex::encode(digest::digest(&digest::SHA256, b""));
    let signed = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\n{signed}\n{payload}"
    );
    let scope = format!("{day}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let mut key = format!("AWS4{secret_key}").into_bytes();
    for part in [day, REGION, "s3", "aws4_request"] {
        key = mac(&key, part.as_bytes());
    }
    let signature = hex::encode(mac(&key, to_sign.as_bytes()));
    vec![
        ("x-amz-date".into(), amz_date.into()),
        ("x-amz-content-sha256".into(), payload),
        (
            "Authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
            ),
        ),
    ]
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signing-key derivation and HMAC chain against the "GET Object"
    /// example of AWS's SigV4 documentation (sig-v4-header-based-auth),
    /// whose canonical request is reproduced here with the same inputs.
    #[test]
    fn aws_documentation_vector() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let canonical = "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\nx-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n{}",
            hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
        );
        let mut key = format!("AWS4{secret}").into_bytes();
        for part in ["20130524", "us-east-1", "s3", "aws4_request"] {
            key = mac(&key, part.as_bytes());
        }
        assert_eq!(
            hex::encode(mac(&key, to_sign.as_bytes())),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn headers_name_the_scope_and_signed_headers() {
        let h = sign_at("HEAD", "127.0.0.1:9", "/b", "ak", "sk", "20261203T000000Z");
        assert_eq!(h[0], ("x-amz-date".into(), "20261203T000000Z".into()));
        assert!(h[2].1.starts_with(
            "AWS4-HMAC-SHA256 Credential=ak/20261203/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="
        ));
    }
}
