"""The data stage: a file's rows (rows) → one Conversation per row, each format its module (formats, conversation)
→ ids under a truncation policy, cached and counted (splits; chat_format and ptune.families write the ids) →
padded batches (collate); `ptune data` (report).  docs/architecture.md (Data) has the route and how to add a format."""
