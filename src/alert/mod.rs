//! Alerts leave the machine here: the channels configured in `[alerts]`, the message each one
//! gets (a minijinja template per channel), sending (SMTP through lettre, DingTalk, Feishu, WeCom,
//! Slack and plain webhooks through reqwest), per-robot rate limits, and the deliverer that drains
//! the store's outbox in the background.
//!
//! The outbox row is written with the state change (worker, scheduler); nothing on the scheduling
//! path awaits a send. Rows and logs hold channel names, never addresses or secrets.

mod channel;
mod deliver;
mod limit;
mod message;
mod send;

pub use channel::{Channel, ChannelError, ChannelKind, Channels, Target};
pub use deliver::{Deliverer, DeliverySettings, PassReport, WallClock};
pub use limit::{Allowance, RateLimit, allowance};
pub use message::{
    AlertContext, Message, RenderError, Summary, check_templates, context_of, log_tail, log_url, render, stored_log,
};
pub use send::{Answer, SendError, Sender, dingtalk_sign, feishu_sign, mask, webhook_signature};
