//! Alerts leave the machine here: the channels configured in `[alerts]`, the message each one
//! gets (a minijinja template per channel), sending (SMTP through lettre, DingTalk, Feishu, WeCom,
//! Slack and plain webhooks through reqwest), per-robot rate limits, and the deliverer that drains
//! the store's outbox in the background, running callbacks (`callback.rs`) from it too; and the
//! channels as a capability for the operators (`notify.rs`: `EmailOperator`, the chat operators,
//! `alerts::send`).
//!
//! The outbox row is written with the state change (worker, scheduler); nothing on the scheduling
//! path awaits a send. Rows and logs hold channel names, never addresses or secrets.

mod callback;
mod channel;
mod deliver;
mod limit;
mod message;
mod notify;
mod send;

pub use callback::{CallbackRunner, CallbackSettings};
pub use channel::{Channel, ChannelError, ChannelKind, Channels, Target};
pub use deliver::{Deliverer, DeliverySettings, PassReport, WallClock};
pub use limit::{Allowance, RateLimit, allowance};
pub use message::{
    AlertContext, Message, RenderError, Summary, callback_context, check_templates, context_of, log_tail, log_url,
    render, stored_log,
};
pub use notify::Notifier;
pub use send::{Answer, Mail, SendError, Sender, dingtalk_sign, feishu_sign, mask, webhook_signature};
