-- Quizzes (issue 21): a timed run of a deck's multiple-choice cards, scored by the server. Each
-- question is a copy of the card as asked (its choices in the order shown, the right one's index,
-- the cited passage), so a result reads the same after its card is edited or deleted; a result
-- outlives its deck (deck_id set NULL) and goes with the account.
CREATE TABLE quizzes (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    deck_id        uuid REFERENCES decks (id) ON DELETE SET NULL,
    deck_title     text NOT NULL DEFAULT '',
    question_count integer NOT NULL,
    time_limit_s   integer NOT NULL,
    started_at     timestamptz NOT NULL,
    deadline       timestamptz NOT NULL,
    -- Set once, by the submit that scores the quiz (NULL: not submitted yet).
    submitted_at   timestamptz,
    correct        integer,
    unanswered     integer,
    time_taken_ms  bigint,
    late           boolean
);
-- GET /v1/quizzes: a student's submitted quizzes, newest first.
CREATE INDEX quizzes_user_submitted ON quizzes (user_id, submitted_at DESC, id DESC) WHERE submitted_at IS NOT NULL;
CREATE INDEX quizzes_deck ON quizzes (deck_id);

CREATE TABLE quiz_questions (
    quiz_id   uuid NOT NULL REFERENCES quizzes (id) ON DELETE CASCADE,
    position  integer NOT NULL,
    card_id   uuid,  -- no foreign key: the copy below stays when the card goes
    front     text NOT NULL,
    choices   jsonb NOT NULL,
    answer    smallint NOT NULL,
    chosen    smallint,  -- NULL: unanswered
    file_id   uuid,
    file_name text NOT NULL DEFAULT '',
    chunk_id  uuid,
    page      integer NOT NULL DEFAULT 0,
    heading   text NOT NULL DEFAULT '',
    quote     text NOT NULL DEFAULT '',
    PRIMARY KEY (quiz_id, position)
);
