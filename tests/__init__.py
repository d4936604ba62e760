"""Tests for scanner-agent."""
