"""Sleep: select -> load -> dream -> (rest) -> update -> probes -> seed -> gate -> publish. Each stage passes plain data."""
