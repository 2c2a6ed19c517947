-- The runtime's own tables: crash reports (supervision) and the instance registry.

CREATE TABLE crash_reports (
    id          bigserial PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('crash', 'stall', 'start_error', 'shutdown_error', 'gave_up')),
    occurred_at timestamptz NOT NULL,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    path        text        NOT NULL,
    exc_type    text,
    message     text,
    report      jsonb       NOT NULL
);

CREATE INDEX crash_reports_occurred_at ON crash_reports (occurred_at DESC, id DESC);
