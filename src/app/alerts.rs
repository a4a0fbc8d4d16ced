//! The alert services the front ends share: starting the deliverer, listing the outbox, sending
//! a test message, and `dags test`'s preview and `--send-alerts`.

use super::App;
use crate::alert::{
    Answer, CallbackRunner, CallbackSettings, Channels, Deliverer, DeliverySettings, Message, Notifier, context_of,
    log_tail, render,
};
use crate::store::{AlertFilter, OutboxRow, Store};
use crate::worker::{Runner, Worker};
use anyhow::bail;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// A row `dags test` would send, with its message (or why it cannot be rendered or sent).
pub struct AlertPreview {
    pub row: OutboxRow,
    pub message: Result<Message, String>,
}

impl App {
    pub fn alert_channels(&self) -> Channels {
        Channels::from_config(&self.config.alerts)
    }

    /// The deliverer of this process, its leases owned by `runner`, on the wall clock.
    pub fn deliverer(&self, store: &Store, runner: &Runner) -> Deliverer {
        let settings = DeliverySettings::from_config(&self.config, runner.id.clone());
        Deliverer::new(store.clone(), self.alert_channels(), settings, Arc::new(Utc::now))
    }

    /// The channels as the operators and `alerts::send` reach them; sends through rate-limited
    /// robots are counted in `store` with the alerts.
    pub fn notifier(&self, store: Option<&Store>) -> Notifier {
        let notifier = Notifier::new(
            self.alert_channels(),
            std::time::Duration::from_secs_f64(self.config.alerts.delivery_timeout),
        );
        match store {
            Some(store) => notifier.with_store(store.clone()),
            None => notifier,
        }
    }

    /// Runs callbacks for the scheduler's deliverer, with `worker`'s closure host.
    pub fn callback_runner(&self, store: &Store, worker: &Worker) -> CallbackRunner {
        let settings = self.worker_settings();
        let mut secrets = crate::operators::secrets(&settings);
        secrets.extend(self.alert_channels().secrets());
        let callback_settings = CallbackSettings {
            timeout: settings.task_script_timeout,
            base_url: self.config.webserver.base_url.clone(),
            variables: settings.variables.clone(),
            secrets,
        };
        CallbackRunner::new(store.clone(), worker.scripts(), self.notifier(Some(store)), callback_settings)
    }

    /// Rows a process that is gone left `sending` are sent again now, not when their lease ends.
    pub fn release_alert_leases_of_gone_owners(&self, store: &Store) -> anyhow::Result<usize> {
        let (owners, runners) =
            store.read(|tx| Ok::<_, crate::store::StoreError>((tx.alert_lease_owners()?, tx.runners()?)))?;
        let liveness = self.liveness();
        let mut released = 0;
        for owner in owners.iter().filter(|o| liveness.is_gone(Some(o.as_str()), &runners)) {
            released += store.write(|tx| tx.release_alert_leases(owner))?;
        }
        Ok(released)
    }

    /// `alerts list`.
    pub fn alert_list(&self, filter: &AlertFilter) -> anyhow::Result<Vec<OutboxRow>> {
        let store = self.open_store()?;
        Ok(store.read(|tx| tx.alert_list(filter))?)
    }

    /// `alerts test CHANNEL`: a test message, sent now; the service's answer.
    pub async fn test_alert(&self, channel: &str, to: Option<String>) -> anyhow::Result<Answer> {
        let channels = self.alert_channels();
        let channel = channels.get(channel)?;
        let ctx = crate::alert::AlertContext {
            event: "test".into(),
            event_text: "test".into(),
            dag_id: "rhaiflow".into(),
            run_id: "test".into(),
            email: to.into_iter().collect(),
            ..Default::default()
        };
        let message = render(channel, &ctx)?;
        let sender = crate::alert::Sender::new(std::time::Duration::from_secs_f64(self.config.alerts.delivery_timeout));
        Ok(sender.send(channel, &message, Utc::now()).await?)
    }

    /// The rows a run wrote to the outbox, each with the message it gets.
    pub fn preview_alerts(&self, store: &Store, dag_id: &str, run_id: &str) -> anyhow::Result<Vec<AlertPreview>> {
        let filter = AlertFilter { dag_id: Some(dag_id.into()), run_id: Some(run_id.into()), ..Default::default() };
        let mut rows = store.read(|tx| tx.alert_list(&filter))?;
        rows.reverse();
        let channels = self.alert_channels();
        let base_url = self.config.webserver.base_url.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let secrets = channels.secrets();
        let mut out = Vec::new();
        for row in rows.into_iter().filter(|r| !r.channel.starts_with("callback:")) {
            let tail = match row.payload.get("log_path").and_then(|p| p.as_str()) {
                Some(p) => runtime.block_on(async {
                    log_tail(crate::alert::stored_log(store, &row).await, std::path::Path::new(p)).await
                }),
                None => None,
            };
            let ctx = context_of(&row, base_url.as_deref(), tail.map(|t| crate::alert::mask(&t, &secrets)));
            let message = match channels.get(&row.channel) {
                Ok(channel) => render(channel, &ctx).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            out.push(AlertPreview { row, message });
        }
        Ok(out)
    }

    /// `dags test --send-alerts`: the run's held rows are sent now (one attempt each; what fails
    /// stays `pending` for the scheduler's deliverer to retry).
    pub fn send_held_alerts(
        &self,
        store: &Store,
        runner: &Runner,
        (dag_id, run_id): (&str, &str),
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<OutboxRow>> {
        let released = store.write(|tx| tx.release_held_alerts(dag_id, run_id, now))?;
        if released == 0 {
            return Ok(Vec::new());
        }
        let deliverer = self.deliverer(store, runner);
        let runtime = super::runtime()?;
        runtime.block_on(deliverer.deliver_due(now))?;
        let filter = AlertFilter { dag_id: Some(dag_id.into()), run_id: Some(run_id.into()), ..Default::default() };
        let mut rows = store.read(|tx| tx.alert_list(&filter))?;
        rows.reverse();
        Ok(rows)
    }

    /// Fails unless `name` is a configured channel, naming the configured ones.
    pub fn check_channel(&self, name: &str) -> anyhow::Result<()> {
        if let Err(e) = self.alert_channels().get(name) {
            bail!("{e}");
        }
        Ok(())
    }
}
