//! The handshake's proof of the job secret: the server sends a random challenge in its
//! `HelloReply`, the client answers with HMAC-SHA256 of it keyed by the secret
//! (`Auth`), and the server checks the answer in constant time. The secret never crosses
//! the wire, and a captured answer is worth nothing on another connection, whose challenge
//! differs.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Bytes of a proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;

/// Domain separation: a tag for this protocol can never be mistaken for another use of
/// the same secret.
const CONTEXT: &[u8] = b"benchfs-auth-v1";

fn keyed(secret: &[u8], challenge: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(CONTEXT);
    mac.update(challenge);
    mac
}

/// The client's answer to `challenge`.
pub fn proof(secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    keyed(secret, challenge).finalize().into_bytes().to_vec()
}

/// Whether `answer` proves `secret` for `challenge`, compared in constant time.
pub fn verify(secret: &[u8], challenge: &[u8], answer: &[u8]) -> bool {
    keyed(secret, challenge).verify_slice(answer).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_and_the_challenge_make_the_proof() {
        let challenge = [7u8; CHALLENGE_LEN];
        let answer = proof(b"job-42", &challenge);
        assert_eq!(answer.len(), PROOF_LEN);
        assert!(verify(b"job-42", &challenge, &answer));
        assert!(!verify(b"job-43", &challenge, &answer), "another secret");
        assert!(
            !verify(b"job-42", &[8u8; CHALLENGE_LEN], &answer),
            "another challenge"
        );
        assert!(
            !verify(b"job-42", &challenge, &answer[..31]),
            "a cut answer"
        );
        assert!(!verify(b"job-42", &challenge, b""), "no answer");
    }
}
