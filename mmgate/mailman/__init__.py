"""The Mailman side: who is a list (routing, directory) and how list mail
gets into Mailman's queues (injection)."""
