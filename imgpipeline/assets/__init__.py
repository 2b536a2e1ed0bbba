"""Assets: the streaming sources (Kafka topic, landing metadata) and the warehouse tables."""
