"""Thin rclpy layer: nodes, message conversions and the demo runner. Everything here needs rclpy."""
