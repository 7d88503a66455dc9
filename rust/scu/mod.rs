//! The storage SCU: C-ECHO, and C-STORE of Part 10 files streamed from disk on one or more
//! associations (PS3.4 Annex A and B, SCU side; PS3.7 §9.1.1, §9.1.5).
//!
//! `association` is the requestor side of one association, `part10` reads what a file's header
//! and the start of its data set say about it, `transcode` converts native data sets (big
//! endian, deflated, explicit VR) to Explicit or Implicit VR Little Endian while streaming for
//! peers that take neither a file's own syntax nor the next one, and `send` distributes files
//! over parallel associations and pipelines them within the asynchronous operations window the
//! peer grants.

use std::sync::Arc;
use std::time::Duration;

use crate::association::VERIFICATION_SOP_CLASS;
use crate::dimse::{self, Command};
use crate::error::Error;
use crate::pdu;
use crate::transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN;

mod association;
mod part10;
mod send;
pub(crate) mod transcode;

pub use association::{Proposal, Requestor};
pub use part10::Part10Header;
pub use send::{send, InstanceResult};

/// Most requests kept outstanding on one association. While we write a data set we do not
/// read, so the peer's responses to the outstanding requests must fit our socket's receive
/// buffer, or both sides could block writing; 64 responses of a few hundred bytes are far
/// below any default buffer.
pub const MAX_ASYNC_WINDOW: u16 = 64;

/// Most bytes of user identity fields we send: the user information item that carries them
/// has a u16 length (PS3.8 §9.3.2.3), shared with our other sub-items (under 200 bytes).
pub const MAX_USER_IDENTITY: usize = 65_000;

/// Where to send and how to ask.
#[derive(Debug, Clone)]
pub struct ScuConfig {
    pub host: String,
    pub port: u16,
    pub called_ae: String,
    pub calling_ae: String,
    /// Largest P-DATA-TF PDU we receive, announced in the A-ASSOCIATE-RQ; 0 means no limit.
    pub max_pdu: u32,
    /// How long to wait to connect, and for each read or write.
    pub timeout: Option<Duration>,
    /// Requests we offer to keep outstanding (asynchronous operations window, PS3.7 §D.3.3.3);
    /// 1 means synchronous, and then the item is not sent.
    pub async_window: u16,
    /// DICOM TLS (PS3.15 Annex B) over the connection, when set.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The user identity sub-item of our A-ASSOCIATE-RQ (PS3.7 §D.3.3.7), when set.
    pub user_identity: Option<pdu::UserIdentityRq>,
}

impl ScuConfig {
    /// Refuse what no peer could accept: AE titles must be 1 to 16 printable ASCII characters
    /// without backslash (PS3.5 §6.2).
    pub fn validate(&self) -> Result<(), Error> {
        for (name, title) in [("called", &self.called_ae), ("calling", &self.calling_ae)] {
            let trimmed = title.trim_matches(' ');
            if title.len() > 16 || pdu::ae_title(&pdu::ae_field(title)) != Some(trimmed) {
                return Err(Error::InvalidConfig(format!(
                    "the {name} AE title must be 1 to 16 printable ASCII characters without \
                     backslash, got {title:?}"
                )));
            }
        }
        if let Some(identity) = &self.user_identity {
            let total = identity.primary.len() + identity.secondary.len();
            if identity.primary.is_empty() || total > MAX_USER_IDENTITY {
                return Err(Error::InvalidConfig(format!(
                    "a user identity needs 1 to {MAX_USER_IDENTITY} bytes in all, got {total}"
                )));
            }
        }
        if !(1..=MAX_ASYNC_WINDOW).contains(&self.async_window) {
            return Err(Error::InvalidConfig(format!(
                "the asynchronous operations window must be 1 to {MAX_ASYNC_WINDOW}, got {}",
                self.async_window
            )));
        }
        Ok(())
    }
}

/// Verify the peer with a C-ECHO (PS3.7 §9.1.5); returns the status it answers.
pub fn echo(config: &ScuConfig) -> Result<u16, Error> {
    config.validate()?;
    let proposal = Proposal {
        abstract_syntax: VERIFICATION_SOP_CLASS.into(),
        // The syntax every DICOM peer supports (PS3.5 §10.1).
        transfer_syntax: IMPLICIT_VR_LITTLE_ENDIAN.into(),
    };
    let mut association = Requestor::open(config, std::slice::from_ref(&proposal))?;
    let context_id = association
        .context_for(&proposal.abstract_syntax, &proposal.transfer_syntax)
        .unwrap_or(1);
    let message_id = association.message_id();
    association.queue_command(
        context_id,
        &Command {
            command_field: dimse::C_ECHO_RQ,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.into()),
            ..Command::default()
        },
    );
    association.flush()?;
    let reply = association.reply()?;
    if reply.message_id != message_id {
        return Err(association.unexpected_reply(reply.message_id));
    }
    // The echo has been answered; a peer that then mishandles the release changes nothing.
    let _ = association.release();
    Ok(reply.status)
}

#[cfg(test)]
mod tests;
