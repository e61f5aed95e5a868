//! The handshake's proof of the job secret. A caller's `Hello` carries its UCX worker
//! address and HMAC-SHA256 of that address keyed by the secret; the server checks the tag
//! in constant time before it hands the address to UCX to connect back. So the secret
//! never crosses the wire, and a server with a secret parses no address bytes that a
//! holder of the secret did not sign (UCX aborts the process on a malformed address).
//!
//! Why no server challenge: the server can answer a caller only over a connection to the
//! caller's address, so a challenge would come after the server had already trusted that
//! address. A replayed `Hello` gains nothing: the server connects back to the address in
//! it, whose owner alone receives the session that the reply names.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;

/// Domain separation: a tag for this protocol can never be mistaken for another use of
/// the same secret.
const CONTEXT: &[u8] = b"benchfs-hello-v4";

fn keyed(secret: &[u8], address: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(CONTEXT);
    mac.update(address);
    mac
}

/// The caller's proof of `secret` for its worker `address`.
pub fn proof(secret: &[u8], address: &[u8]) -> Vec<u8> {
    keyed(secret, address).finalize().into_bytes().to_vec()
}

/// The tag a server with `secret` publishes in its registry entry, so that a caller with
/// another secret (or none) is told at once, without a call the server would leave
/// unanswered. It reveals nothing of a random secret; a guessable one could be tried
/// against it offline, so job secrets should be random bytes.
pub fn registry_tag(secret: &[u8], node_id: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(b"benchfs-registry-v4");
    mac.update(node_id.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Whether `answer` proves `secret` for `address`, compared in constant time.
pub fn verify(secret: &[u8], address: &[u8], answer: &[u8]) -> bool {
    keyed(secret, address).verify_slice(answer).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_and_the_address_make_the_proof() {
        let address = [7u8; 79];
        let answer = proof(b"job-42", &address);
        assert_eq!(answer.len(), PROOF_LEN);
        assert!(verify(b"job-42", &address, &answer));
        assert!(!verify(b"job-43", &address, &answer), "another secret");
        assert!(!verify(b"job-42", &[8u8; 79], &answer), "another address");
        assert!(!verify(b"job-42", &address, &answer[..31]), "a cut answer");
        assert!(!verify(b"job-42", &address, b""), "no answer");
        assert_ne!(answer, registry_tag(b"job-42", "node0"), "another domain");
        assert_ne!(
            registry_tag(b"job-42", "node0"),
            registry_tag(b"job-42", "node1")
        );
    }
}
