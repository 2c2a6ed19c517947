"""The parts of the outbox sender, one concern per module; the actor is :mod:`atlas.actors.outbox_sender`."""
