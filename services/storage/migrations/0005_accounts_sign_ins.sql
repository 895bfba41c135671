-- Accounts and sign-ins (issues 18 and 23).
--
-- An account's role is stored with it: admin rights are granted by an operator
-- (`python -m storage.admin grant EMAIL`), never claimed by registering an address.
ALTER TABLE users
    ADD COLUMN role text NOT NULL DEFAULT 'student' CHECK (role IN ('student', 'admin'));

-- ADMIN_EMAILS entries already applied: each grants admin once, to an account that existed when
-- storage first saw the entry; an account registered later with that address gets nothing from it.
CREATE TABLE admin_bootstrap (
    email      text PRIMARY KEY,  -- trimmed, lower case
    granted_to uuid,              -- NULL: no account had the address then
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One sign-in = one refresh-token family: every refresh token rotated from the first shares it.
-- Ending it (logout, or a replayed refresh token) ends every token of the family, and the access
-- tokens carrying its id are refused until they expire.
CREATE TABLE sign_ins (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The latest expiry of its refresh tokens: after it the row is only history and is deleted.
    expires_at timestamptz NOT NULL,
    ended_at   timestamptz,
    end_reason text NOT NULL DEFAULT ''  -- 'logout' or 'reuse'
);
CREATE INDEX sign_ins_user_ended ON sign_ins (user_id, ended_at);

-- Refresh tokens by the SHA-256 of their id (jti): the tokens themselves are never stored.
CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    sign_in_id uuid NOT NULL REFERENCES sign_ins (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    -- Set when it is exchanged for the next one; a second use is a replay.
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_sign_in ON refresh_tokens (sign_in_id);
