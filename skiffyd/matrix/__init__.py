"""The homeserver side: transport, session, sync and outbox services, crypto."""
