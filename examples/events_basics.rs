//! The README's events example: a node publishing with a last-value cache, a subscriber that
//! waits until it is live, and a late joiner that starts from a snapshot. Exits by itself.
//!
//! ```text
//! cargo run --example events_basics
//! ```

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use zmesh::{Client, Delivery, Node, Subscriber};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A node that publishes (PUB on :4251) and keeps the last value of every topic.
    let shop = Node::builder()
        .bind("tcp://127.0.0.1:4250")
        .events("tcp://127.0.0.1:4251")
        .last_value_cache(true)
        .start()
        .await?;
    let publisher = shop.publisher().expect("events are on");

    let subscribe = || {
        Subscriber::builder()
            .connect("tcp://127.0.0.1:4251")
            .subscribe("orders.")
    };
    let mut billing = subscribe().start::<Order>().await?;
    // An event published before a subscription reaches the publisher is not delivered to
    // that subscriber: wait for it before the first one.
    let wait = Duration::from_secs(5);
    publisher.wait_for_subscribers("orders.", 1, wait).await?;
    let order = Order {
        id: 1,
        item: "book".into(),
    };
    publisher.publish("orders.created", &order).await?;
    if let Some(Delivery::Event(event)) = billing.next().await {
        println!("billing {}: {:?}", event.topic, event.payload);
    }

    // A late joiner starts from the snapshot (taking it also makes sure its subscription is
    // live), then follows live events; a missed one would arrive as Delivery::Gap.
    let mut late = subscribe().start::<Order>().await?;
    let rpc = Client::new("tcp://127.0.0.1:4250");
    let snapshot = late.snapshot(&rpc, "orders.").await?;
    for entry in &snapshot.entries {
        println!("state {} @{}: {:?}", entry.topic, entry.seq, entry.value);
    }
    publisher.publish("orders.shipped", &order).await?;
    if let Some(Delivery::Event(event)) = late.next().await {
        println!("late joiner {} #{:?}", event.topic, event.seq);
    }
    Ok(())
}
