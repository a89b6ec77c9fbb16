//! Which traces are kept: head sampling that suits a feed.
//!
//! A busy feed publishes thousands of quotes a second, and each would be
//! a trace in every node that delivers it; orders are rare and each is
//! worth keeping. So a unit of work (a published message, its fan-out on
//! a node, an order round trip) is decided once, *before* any span is
//! made, from three inputs:
//!
//! - `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the standard
//!   names, default `parentbased_always_on`): whether an incoming
//!   `traceparent`'s sampled flag is followed (`parentbased_*`), and how
//!   roots are sampled (`*always_on`: by the ratios below;
//!   `*always_off`: never; `*traceidratio`: the ratios below times ARG);
//! - the quote ratio (feed messages: `quotes.*` and other non-order
//!   topics), default 0.01;
//! - the order ratio (order round trips and `orders.*` updates), default
//!   1.0.
//!
//! A message whose envelope carries a sampled `traceparent` is therefore
//! traced on every node (the publisher already decided), one carrying an
//! unsampled one costs nothing more than parsing it, and one without is a
//! root at its family's ratio. Unsampled work makes no span at all.
//!
//! The SDK's own sampler ([`Honour`]) only carries these decisions out: a
//! span our code decided carries `sampling.priority = 1`; any other span
//! follows its parent, and a root nobody decided is dropped.

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};
use wire::TopicFamily;

use super::TelemetryError;

/// The attribute that marks a span whose sampling our code decided (the
/// OpenTracing convention, which Jaeger also reads as "keep this").
pub(crate) const PRIORITY: &str = "sampling.priority";

/// What a unit of work is, for its root sampling ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Market data: `quotes.*` and other non-order topics.
    Feed,
    /// Order round trips and `orders.*` updates.
    Order,
}

impl From<TopicFamily> for Kind {
    fn from(family: TopicFamily) -> Kind {
        match family {
            TopicFamily::Orders => Kind::Order,
            TopicFamily::Quotes | TopicFamily::Other => Kind::Feed,
        }
    }
}

impl Kind {
    /// The kind of a message published on `topic`.
    pub fn of_topic(topic: &str) -> Kind {
        wire::topic::family_of(topic).into()
    }
}

/// How roots are sampled, before the family ratio applies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Root {
    On,
    Off,
    Ratio(f64),
}

/// The standard sampler setting, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Base {
    /// `parentbased_*`: an incoming context's sampled flag decides.
    follow_parent: bool,
    root: Root,
}

impl Default for Base {
    fn default() -> Self {
        Base { follow_parent: true, root: Root::On }
    }
}

impl Base {
    /// Parses `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub(crate) fn parse(sampler: Option<&str>, arg: Option<&str>) -> Result<Base, TelemetryError> {
        let Some(sampler) = sampler else { return Ok(Base::default()) };
        let (follow_parent, root) = match sampler.strip_prefix("parentbased_") {
            Some(root) => (true, root),
            None => (false, sampler),
        };
        let root = match root {
            "always_on" => Root::On,
            "always_off" => Root::Off,
            "traceidratio" => {
                let ratio = match arg {
                    None => 1.0,
                    Some(arg) => {
                        arg.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
                            TelemetryError::new(
                                "OTEL_TRACES_SAMPLER_ARG",
                                format!("{arg:?} is not a ratio in 0..=1"),
                            )
                        })?
                    }
                };
                Root::Ratio(ratio)
            }
            _ => {
                return Err(TelemetryError::new(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "{sampler:?} is not one of always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                    ),
                ));
            }
        };
        Ok(Base { follow_parent, root })
    }
}

/// The node's sampling policy (see the module header).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sampling {
    pub(crate) base: Base,
    pub(crate) quote_ratio: f64,
    pub(crate) order_ratio: f64,
}

impl Sampling {
    /// Whether a unit of work of `kind` is traced, given the sampled flag
    /// of the context it continues (if any).
    pub(crate) fn decide(&self, kind: Kind, parent_sampled: Option<bool>) -> bool {
        if self.base.follow_parent
            && let Some(sampled) = parent_sampled
        {
            return sampled;
        }
        let root = match self.base.root {
            Root::On => 1.0,
            Root::Off => return false,
            Root::Ratio(r) => r,
        };
        let family = match kind {
            Kind::Feed => self.quote_ratio,
            Kind::Order => self.order_ratio,
        };
        chance(root * family)
    }
}

fn chance(p: f64) -> bool {
    if p >= 1.0 {
        true
    } else if p <= 0.0 {
        false
    } else {
        rand::random::<f64>() < p
    }
}

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`) into a
/// remote span context; `None` if it is malformed or its ids are zero.
///
/// By hand rather than through the SDK's propagator, which needs a
/// carrier and builds a `Context` even for unsampled headers: this runs
/// once per message that carries one. The hex itself is parsed by the
/// `opentelemetry` id types.
pub(crate) fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let tp = tp.trim();
    let b = tp.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = u8::from_str_radix(tp.get(0..2)?, 16).ok()?;
    // Version 00 is exactly 55 characters; later versions may append
    // fields after another dash, and ff is forbidden.
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let hex = |s: &str| s.bytes().all(|c| c.is_ascii_hexdigit());
    let (trace, span, flags) = (tp.get(3..35)?, tp.get(36..52)?, tp.get(53..55)?);
    if !(hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
    let cx = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    cx.is_valid().then_some(cx)
}

/// The `traceparent` of a span context (version 00).
pub(crate) fn format_traceparent(cx: &SpanContext) -> String {
    format!("00-{:032x}-{:016x}-{:02x}", cx.trace_id(), cx.span_id(), cx.trace_flags().to_u8())
}

/// The SDK sampler: carries out the decisions [`Sampling`] made.
#[derive(Debug, Clone)]
pub(crate) struct Honour;

impl ShouldSample for Honour {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        _trace_id: TraceId,
        _name: &str,
        _kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let parent = parent.filter(|cx| cx.has_active_span()).map(|cx| cx.span().span_context().clone());
        let decided = attributes.iter().any(|kv| kv.key.as_str() == PRIORITY);
        let sample = decided || parent.as_ref().is_some_and(SpanContext::is_sampled);
        SamplingResult {
            decision: if sample { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop },
            attributes: Vec::new(),
            trace_state: parent.map(|p| p.trace_state().clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn sampling(sampler: Option<&str>, arg: Option<&str>, quote: f64, order: f64) -> Sampling {
        Sampling { base: Base::parse(sampler, arg).unwrap(), quote_ratio: quote, order_ratio: order }
    }

    #[test]
    fn parses_traceparent() {
        let cx = parse_traceparent(TP).unwrap();
        assert_eq!(format!("{:032x}", cx.trace_id()), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(format!("{:016x}", cx.span_id()), "b7ad6b7169203331");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(format_traceparent(&cx), TP);
        let unsampled = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!unsampled.is_sampled());
        // A later version may carry more fields; its flags' other bits are ignored.
        let v1 = parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-extra").unwrap();
        assert!(v1.is_sampled());
        for bad in [
            "",
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c8031zz-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn parent_based_follows_the_incoming_flag() {
        let s = sampling(None, None, 0.0, 0.0);
        assert!(s.decide(Kind::Feed, Some(true)), "a sampled parent is continued even at ratio 0");
        assert!(!s.decide(Kind::Order, Some(false)));
        assert!(!s.decide(Kind::Feed, None), "roots at ratio 0");
        let all = sampling(Some("parentbased_always_on"), None, 1.0, 1.0);
        assert!(all.decide(Kind::Feed, None) && all.decide(Kind::Order, None));
        assert!(!all.decide(Kind::Feed, Some(false)), "an unsampled parent is not traced");
    }

    #[test]
    fn roots_follow_their_family_ratio() {
        let s = sampling(None, None, 0.25, 1.0);
        let n = 20_000;
        let kept = (0..n).filter(|_| s.decide(Kind::Feed, None)).count();
        // 5,000 expected; 6 standard deviations either side.
        assert!((4_630..=5_370).contains(&kept), "{kept}");
        assert!((0..100).all(|_| s.decide(Kind::Order, None)));
        let halved = sampling(Some("parentbased_traceidratio"), Some("0.5"), 1.0, 0.0);
        let kept = (0..n).filter(|_| halved.decide(Kind::Feed, None)).count();
        assert!((9_570..=10_430).contains(&kept), "ARG multiplies: {kept}");
        assert!(!halved.decide(Kind::Order, None));
        assert!(halved.decide(Kind::Order, Some(true)));
    }

    #[test]
    fn non_parent_based_samplers_ignore_the_parent() {
        let off = sampling(Some("always_off"), None, 1.0, 1.0);
        assert!(!off.decide(Kind::Order, Some(true)));
        let on = sampling(Some("always_on"), None, 1.0, 1.0);
        assert!(on.decide(Kind::Feed, Some(false)));
        let no_roots = sampling(Some("parentbased_always_off"), None, 1.0, 1.0);
        assert!(!no_roots.decide(Kind::Order, None) && no_roots.decide(Kind::Order, Some(true)));
    }

    #[test]
    fn refuses_unknown_samplers_naming_the_variable() {
        let e = Base::parse(Some("sometimes"), None).unwrap_err().to_string();
        assert!(e.contains("OTEL_TRACES_SAMPLER"), "{e}");
        let e = Base::parse(Some("traceidratio"), Some("2")).unwrap_err().to_string();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
        assert_eq!(Base::parse(Some("traceidratio"), None).unwrap().root, Root::Ratio(1.0));
    }

    #[test]
    fn families_map_to_kinds() {
        assert_eq!(Kind::of_topic("quotes.AAPL"), Kind::Feed);
        assert_eq!(Kind::of_topic("news.x"), Kind::Feed);
        assert_eq!(Kind::of_topic("orders.acct-1"), Kind::Order);
    }
}
