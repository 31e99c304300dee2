"""The contract between tcplab's processes: schema, codec, endpoints, records."""
