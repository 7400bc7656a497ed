//! `grpc.health.v1.Health`: SERVING once storage is open, NOT_SERVING from
//! the moment shutdown begins.
//!
//! Hand-written rather than tonic-health's reporter so that shutdown can do
//! both things the protocol asks: `Check` keeps answering NOT_SERVING while
//! requests drain, and every `Watch` stream is told NOT_SERVING and then
//! ends, instead of holding the drain open until the shutdown timeout. It
//! knows nothing of the broker beyond that one switch.

use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Serving,
    ShuttingDown,
}

impl Phase {
    fn status(self) -> ServingStatus {
        match self {
            Self::Serving => ServingStatus::Serving,
            Self::Starting | Self::ShuttingDown => ServingStatus::NotServing,
        }
    }
}

/// Flips the health of every served service.
#[derive(Debug, Clone)]
pub(crate) struct HealthSwitch {
    phase_tx: watch::Sender<Phase>,
}

impl HealthSwitch {
    /// A switch at NOT_SERVING and the service it drives, which answers for
    /// `services` and for `""` (the server as a whole).
    pub(crate) fn new(services: &'static [&'static str]) -> (Self, HealthServer<HealthService>) {
        let (switch, service) = Self::with_service(services);
        (switch, HealthServer::new(service))
    }

    fn with_service(services: &'static [&'static str]) -> (Self, HealthService) {
        let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
        (Self { phase_tx }, HealthService { services, phase_rx })
    }

    /// Storage is open: every service is SERVING.
    pub(crate) fn serving(&self) {
        self.phase_tx.send_replace(Phase::Serving);
    }

    /// Shutdown began: NOT_SERVING for good, and open watches end.
    pub(crate) fn shutting_down(&self) {
        self.phase_tx.send_replace(Phase::ShuttingDown);
    }
}

/// The `grpc.health.v1.Health` implementation behind a [`HealthSwitch`].
#[derive(Debug)]
pub(crate) struct HealthService {
    services: &'static [&'static str],
    phase_rx: watch::Receiver<Phase>,
}

impl HealthService {
    fn check_known(&self, service: &str) -> Result<(), Status> {
        if service.is_empty() || self.services.contains(&service) {
            Ok(())
        } else {
            Err(Status::not_found(format!("unknown service {service:?}")))
        }
    }
}

fn response(phase: Phase) -> HealthCheckResponse {
    HealthCheckResponse {
        status: phase.status().into(),
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.check_known(&request.get_ref().service)?;
        Ok(Response::new(response(*self.phase_rx.borrow())))
    }

    type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.check_known(&request.get_ref().service)?;
        // The current status, then every change; the stream ends right
        // after reporting the shutdown.
        let mut phase_rx = self.phase_rx.clone();
        phase_rx.mark_changed();
        let updates = futures::stream::unfold(Some(phase_rx), |state| async move {
            let mut phase_rx = state?;
            phase_rx.changed().await.ok()?;
            let phase = *phase_rx.borrow_and_update();
            let next = (phase != Phase::ShuttingDown).then_some(phase_rx);
            Some((Ok(response(phase)), next))
        });
        Ok(Response::new(updates.boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &[&str] = &["tidings.v1.AdminService"];

    fn request(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.to_owned(),
        })
    }

    async fn check(service: &HealthService, name: &str) -> Result<i32, Status> {
        Ok(service.check(request(name)).await?.into_inner().status)
    }

    #[tokio::test]
    async fn check_follows_the_switch_and_refuses_unknown_services() {
        let (switch, service) = HealthSwitch::with_service(SERVICES);
        let not_serving = i32::from(ServingStatus::NotServing);
        assert_eq!(check(&service, "").await.unwrap(), not_serving);
        switch.serving();
        assert_eq!(
            check(&service, SERVICES[0]).await.unwrap(),
            i32::from(ServingStatus::Serving)
        );
        switch.shutting_down();
        assert_eq!(check(&service, "").await.unwrap(), not_serving);
        let err = check(&service, "nope").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn a_watch_sees_not_serving_at_shutdown_and_then_ends() {
        let (switch, service) = HealthSwitch::with_service(SERVICES);
        switch.serving();
        let mut watch = service.watch(request("")).await.unwrap().into_inner();
        let mut next = async || watch.next().await.map(|r| r.unwrap().status);
        assert_eq!(next().await, Some(ServingStatus::Serving.into()));
        switch.shutting_down();
        assert_eq!(next().await, Some(ServingStatus::NotServing.into()));
        assert_eq!(next().await, None, "the watch ends");
    }
}
