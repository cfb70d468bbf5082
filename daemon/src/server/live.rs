//! `live` — the handlers of the live methods (`vx_proto::live::method`):
//! `events.subscribe` on the [`crate::bus`], `runs.active`, and the
//! `query` module's `graph.get`, `task.explain` and `task.log`; and the
//! bus tee every run request puts between the engine and its client.
//!
//! Never: computes anything itself (the bus and `query` do), or blocks the
//! async threads (the queries run on the blocking pool).

use super::Ctx;
use super::router::{Call, Error, Router};
use crate::bus::{self, Tee};
use crate::engine;
use std::sync::Arc;
use vx_proto::catalogue::Empty;
use vx_proto::live::{RunKind, SubscribeParams, SubscribeResult, SubscriptionEnd, method as m};
use vx_proto::{RunEvent, RunParams, codes};

/// Registers the live methods.
pub fn register(r: &mut Router<Ctx>) {
    r.handle::<m::EventsSubscribe, _, _>(subscribe);
    r.inline::<m::RunsActive>(|_, _: Empty| Ok(crate::query::runs_active()));
    r.blocking::<m::GraphGet>(|call, p: RunParams| {
        Ok(crate::query::graph::get(&p, call.state().hot.as_deref())?)
    });
    r.blocking::<m::TaskExplain>(|call, p| {
        Ok(crate::query::task::explain(p, call.state().hot.clone())?)
    });
    r.blocking::<m::TaskLog>(|call, p| Ok(crate::query::task::log(p, call.state().hot.clone())?));
    r.inline::<vx_proto::plugins::method::PluginsList>(|_, _: Empty| Ok(crate::plugins::list()));
}

async fn subscribe(call: Call<Ctx>, p: SubscribeParams) -> Result<SubscribeResult, Error> {
    let queue = call.queue().ok_or_else(|| {
        vx_proto::RpcError::new(
            codes::METHOD_NOT_FOUND,
            "events.subscribe needs a connection that can stream notifications",
        )
    })?;
    // A subscriber that is not passive makes runs publish every task's
    // lifecycle (also what their own clients did not ask for).
    let _watching = (!p.passive).then(|| bus::global().watching());
    let mut sub = bus::global().subscribe(call.id.clone(), p, queue);
    let cancel = call.cancel().clone();
    let ended = tokio::select! {
        e = sub.ended() => e,
        _ = cancel.cancelled() => {
            if cancel.cancelled_here() {
                SubscriptionEnd::Cancelled
            } else {
                SubscriptionEnd::Disconnected
            }
        }
    };
    Ok(SubscribeResult {
        ended,
        delivered: sub.delivered(),
    })
}

/// The engine's event sink for a run request: each event goes to the bus,
/// then to the request's own client (`sink`). Call [`Tee::finish`] on the
/// returned tee when the request ends.
pub fn tee(
    kind: RunKind,
    params: &RunParams,
    sink: impl Fn(RunEvent) + Send + Sync + 'static,
) -> (Arc<Tee>, engine::Events) {
    let tee = Arc::new(bus::global().tee(kind, params));
    let t2 = tee.clone();
    let observer: Arc<dyn engine::Observer> = tee.clone();
    let events = engine::Events::observed(
        move |e| {
            // A failing plugin's warning is shown once: in the run in progress
            // (before its next finished task), else in the next run.
            if matches!(e, RunEvent::Settled { .. } | RunEvent::TaskFinished { .. }) {
                for message in crate::plugins::take_warnings() {
                    let w = RunEvent::Warning { message };
                    t2.publish(&w);
                    sink(w);
                }
            }
            t2.publish(&e);
            sink(e)
        },
        observer,
    );
    (tee, events)
}
