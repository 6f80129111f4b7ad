//! The README's events example: a node publishing with a last-value cache, another node
//! handling its events, and a late joiner that starts from a snapshot. Exits by itself.
//!
//! ```text
//! cargo run --example events_basics
//! ```

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use zmesh::{Client, Delivery, Node, Received, Subscriber};

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

    // A node whose handlers run for every "orders." event, concurrently like RPC handlers.
    let (billed, mut bills) = tokio::sync::mpsc::unbounded_channel();
    let _billing = Node::builder()
        .bind("tcp://127.0.0.1:4252")
        .subscribe("tcp://127.0.0.1:4251")
        .on_event("orders.", move |event: Received<Order>| {
            let billed = billed.clone();
            async move {
                println!("billing {}: {:?}", event.topic, event.payload);
                let _ = billed.send(event.seq);
            }
        })
        .start()
        .await?;

    // What is published before a subscription reaches the publisher is not delivered to
    // that subscriber, so wait for billing's before the first order.
    let publisher = shop.publisher().expect("events are on");
    let wait = Duration::from_secs(5);
    publisher.wait_for_subscribers("orders.", 1, wait).await?;
    let order = Order {
        id: 1,
        item: "book".into(),
    };
    publisher.publish("orders.created", &order).await?;
    bills.recv().await; // billing has handled it

    // A late joiner: subscribe, take the snapshot (which also makes sure the subscription
    // is live), then apply only newer live events.
    let mut orders = Subscriber::builder()
        .connect("tcp://127.0.0.1:4251")
        .subscribe("orders.")
        .start::<Order>()
        .await?;
    let snapshot = orders
        .snapshot(&Client::new("tcp://127.0.0.1:4250"), "orders.")
        .await?;
    for entry in &snapshot.entries {
        println!("state {} @{}: {:?}", entry.topic, entry.seq, entry.value);
    }
    publisher.publish("orders.shipped", &order).await?;
    match orders.next().await {
        Some(Delivery::Event(event)) => {
            println!("{} #{:?}: {:?}", event.topic, event.seq, event.payload)
        }
        Some(Delivery::Gap(gap)) => {
            eprintln!("missed {}: {}..={:?}", gap.topic, gap.first, gap.last)
        }
        None => eprintln!("the subscriber stopped"),
    }
    Ok(())
}
