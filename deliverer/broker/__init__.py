"""The broker: its queues, the messages sent to it by task name, and transport details."""
