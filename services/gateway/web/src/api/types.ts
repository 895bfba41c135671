// Shapes of the gateway's JSON (proto field names; enums as names; int64 as strings;
// proto3 JSON omits fields holding their default value, so most fields are optional).

export interface User {
  user_id: string;
  email: string;
  display_name?: string;
  /** May open the administrators' pages (the gateway's ADMIN_EMAILS); the server checks every call. */
  is_admin?: boolean;
}

/** GET /v1/config: the gateway's limits the app checks before sending, and the caller's role. */
export interface GatewayConfig {
  upload_max_bytes: number;
  max_body_bytes: number;
  is_admin: boolean;
  /** Seconds between the gateway's heartbeats on a silent stream, and its bound on a stalled one. */
  sse_heartbeat_s?: number;
  stream_stall_timeout_s?: number;
}

export interface TokenResponse {
  access_token: string;
  refresh_token: string;
  token_type?: string;
  expires_in?: number;
  user: User;
}

export type FileStatus =
  | 'FILE_STATUS_UNSPECIFIED'
  | 'FILE_STATUS_QUEUED'
  | 'FILE_STATUS_PROCESSING'
  | 'FILE_STATUS_READY'
  | 'FILE_STATUS_FAILED';

export interface StoredFile {
  file_id: string;
  file_name?: string;
  kind?: string;
  size_bytes?: string | number;
  sha256?: string;
  status?: FileStatus;
  error?: string;
  /** A failure's stable name (PDF_ENCRYPTED, ...) and the values its sentence needs. */
  error_reason?: string;
  error_args?: Record<string, string>;
  chunks_done?: number;
  chunks_total?: number;
  created_at?: string;
  updated_at?: string;
  /** Upload responses only: these bytes were already this file of the student's (no second copy). */
  merged?: boolean;
}

export interface Citation {
  index?: number;
  file_id?: string;
  file_name?: string;
  page?: number;
  heading?: string;
  snippet?: string;
  chunk_id?: string;
  score?: number;
}

export interface Agent {
  agent_id: string;
  name_vi?: string;
  name_en?: string;
  description_vi?: string;
  description_en?: string;
}

export interface Session {
  session_id: string;
  title?: string;
  agent_id?: string;
  message_count?: number;
  created_at?: string;
  updated_at?: string;
  last_message_at?: string;
}

export type Role = 'ROLE_UNSPECIFIED' | 'ROLE_USER' | 'ROLE_ASSISTANT';

export interface Message {
  message_id?: string;
  session_id?: string;
  role?: Role;
  content?: string;
  citations?: Citation[];
  agent_id?: string;
  backend?: string;
  created_at?: string;
}

export interface MessageHit {
  message?: Message;
  session_title?: string;
  highlighted?: string;
  score?: number;
}

export interface ChatEvent {
  started?: { session_id?: string; backend?: string };
  delta?: { text?: string };
  citations?: { citations?: Citation[] };
  done?: {
    message_id?: string;
    usage?: { prompt_tokens?: number; completion_tokens?: number };
    timings?: { retrieval_ms?: number; first_token_ms?: number; total_ms?: number };
    cached?: boolean;
  };
  // A gateway may report a failure after the stream has started.
  error?: { code?: string | number; message?: string; request_id?: string; reason?: string; args?: Record<string, string> };
}

export interface EndpointStats {
  service?: string;
  method?: string;
  count?: string | number;
  errors?: string | number;
  p50_ms?: number;
  p95_ms?: number;
  p99_ms?: number;
  per_second?: number;
}

export interface GaugeValue {
  name?: string;
  attributes?: Record<string, string>;
  value?: number;
  /** "gauge", "updowncounter", "counter" (value: increase over the window) or "ratio" (0..1). */
  kind?: string;
  per_second?: number;
  service?: string;
  /** As reported: "By", "%", "{text}", "1" (a ratio). */
  unit?: string;
}

/** Calls in one time slot of the dashboard's window (metrics.proto TimelinePoint). */
export interface TimelinePoint {
  start?: string;
  seconds?: number;
  count?: string | number;
  errors?: string | number;
  per_second?: number;
}

export type PoolAction = 'POOL_ACTION_UNSPECIFIED' | 'POOL_ACTION_MAINTAIN' | 'POOL_ACTION_INCREASE' | 'POOL_ACTION_DECREASE';

/** Pool-size advice from the window's pool figures (metrics.proto PoolRecommendation). */
export interface PoolRecommendation {
  service?: string;
  pool?: string;
  action?: PoolAction;
  current_max?: string | number;
  recommended_max?: string | number;
  mean_in_use?: number;
  peak_in_use?: number;
  mean_utilisation?: number;
  peak_utilisation?: number;
  peak_waiting?: number;
  reason?: string;
}

/** Any histogram other than request durations, in its own unit (metrics.proto HistogramStats). */
export interface HistogramStats {
  name?: string;
  service?: string;
  attributes?: Record<string, string>;
  unit?: string;
  count?: string | number;
  p50?: number;
  p95?: number;
  p99?: number;
  mean?: number;
  per_second?: number;
}

export interface Dashboard {
  window_seconds?: number;
  endpoints?: EndpointStats[];
  gauges?: GaugeValue[];
  spans_received?: string | number;
  traces_seen?: string | number;
  pool_recommendations?: PoolRecommendation[];
  histograms?: HistogramStats[];
  timeline?: TimelinePoint[];
}

export interface Alert {
  name?: string;
  state?: 'ALERT_STATE_UNSPECIFIED' | 'ALERT_STATE_OK' | 'ALERT_STATE_FIRING';
  value?: number;
  threshold?: number;
  since?: string;
  description?: string;
  /** The rule ("pool_utilisation", "response_time_p95", "error_rate"): the web app's text key. */
  code?: string;
  /** The figures behind value (metrics.proto Alert.args). */
  args?: Record<string, string>;
}

// The study loop (storage's studyassist.storage.v1.StudyService, chat's DeckService).
export type CardKind = 'CARD_KIND_UNSPECIFIED' | 'CARD_KIND_FLASHCARD' | 'CARD_KIND_CLOZE' | 'CARD_KIND_MULTIPLE_CHOICE';

/** The passage a card was made from (page: 1-based page or slide, 0 when the format has none). */
export interface CardSource {
  file_id?: string;
  file_name?: string;
  chunk_id?: string;
  page?: number;
  heading?: string;
  quote?: string;
}

export interface StudyCard {
  card_id: string;
  deck_id?: string;
  kind?: CardKind;
  front?: string;
  back?: string;
  /** Multiple choice: four options, `back` among them. */
  choices?: string[];
  source?: CardSource;
  suspended?: boolean;
  state?: string;
  stability?: number;
  difficulty?: number;
  due?: string;
  last_review?: string;
  reviews?: number;
}

export interface Deck {
  deck_id: string;
  title?: string;
  kind?: CardKind;
  file_ids?: string[];
  card_count?: number;
  due_count?: number;
  due_today?: number;
  new_count?: number;
  learned_count?: number;
  /** Share of reviews not rated "again", 0..1 (0 before any review). */
  retention?: number;
  created_at?: string;
  /** CreateDeck only: candidate cards the generator dropped. */
  dropped?: number;
}

/** GET /v1/reviews:due: a page of due cards, soonest first, and how many are due in all. */
export interface DueCards {
  cards?: StudyCard[];
  due_count?: number;
}

/** POST /v1/decks/{deck}/quizzes: the questions, without their answers (storage scores the submit). */
export interface QuizQuestion {
  position?: number;
  card_id?: string;
  front?: string;
  choices?: string[];
}

export interface Quiz {
  quiz_id: string;
  deck_id?: string;
  deck_title?: string;
  questions?: QuizQuestion[];
  time_limit_s?: number;
  started_at?: string;
  deadline?: string;
}

export interface QuizResultQuestion {
  position?: number;
  card_id?: string;
  front?: string;
  choices?: string[];
  /** Index into choices; -1: unanswered (or answered after the time limit). */
  chosen?: number;
  answer?: number;
  correct?: boolean;
  source?: CardSource;
}

export interface QuizResult {
  quiz_id: string;
  deck_id?: string;
  deck_title?: string;
  question_count?: number;
  correct?: number;
  wrong?: number;
  unanswered?: number;
  time_limit_s?: number;
  /** int64: a string in proto3 JSON. */
  time_taken_ms?: string | number;
  late?: boolean;
  started_at?: string;
  submitted_at?: string;
  questions?: QuizResultQuestion[];
}
