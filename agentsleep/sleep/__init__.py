"""Sleep: select -> dream -> seed -> (rest) -> gate -> publish. Each stage passes plain data."""
