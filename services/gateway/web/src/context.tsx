import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';
import type { ApiClient } from './api/client';
import type { GatewayConfig, User } from './api/types';
import { uploadLimit } from './api/upload';

const SELECTION_KEY = 'sa.chatFiles';

interface AppContextValue {
  client: ApiClient;
  user: User;
  /** GET /v1/config once it answered (null before, or when it failed). */
  config: GatewayConfig | null;
  /** May open the dashboard: the server's current word, else what the last sign-in said. */
  isAdmin: boolean;
  /** The server's upload cap (its default until /v1/config answered). */
  uploadMaxBytes: number;
  /** Files the student chose for chat; empty means "all ready files". */
  chatFileIds: string[];
  setChatFileIds: (ids: string[]) => void;
  /** Bumped whenever the sessions list may have changed. */
  sessionsVersion: number;
  sessionsChanged: () => void;
}

const AppContext = createContext<AppContextValue | null>(null);

function loadSelection(userId: string): string[] {
  try {
    const raw = JSON.parse(localStorage.getItem(`${SELECTION_KEY}.${userId}`) ?? '[]') as unknown;
    return Array.isArray(raw) ? raw.filter((id): id is string => typeof id === 'string') : [];
  } catch {
    return [];
  }
}

export function AppProvider({ client, user, children }: { client: ApiClient; user: User; children: ReactNode }) {
  const [chatFileIds, setIds] = useState<string[]>(() => loadSelection(user.user_id));
  const [sessionsVersion, setSessionsVersion] = useState(0);
  const setChatFileIds = useCallback(
    (ids: string[]) => {
      setIds(ids);
      try {
        localStorage.setItem(`${SELECTION_KEY}.${user.user_id}`, JSON.stringify(ids));
      } catch {
        // not persisted: fine
      }
    },
    [user.user_id],
  );
  const sessionsChanged = useCallback(() => setSessionsVersion((n) => n + 1), []);
  const [config, setConfig] = useState<GatewayConfig | null>(null);
  useEffect(() => {
    let live = true;
    setConfig(null);
    client
      .config()
      .then((loaded) => live && setConfig(loaded))
      // Not fatal: the link follows the sign-in answer and uploads the default cap (the server still checks).
      .catch(() => undefined);
    return () => {
      live = false;
    };
  }, [client, user.user_id]);
  const isAdmin = config ? config.is_admin === true : user.is_admin === true;
  const uploadMaxBytes = uploadLimit(config);
  const value = useMemo(
    () => ({ client, user, config, isAdmin, uploadMaxBytes, chatFileIds, setChatFileIds, sessionsVersion, sessionsChanged }),
    [client, user, config, isAdmin, uploadMaxBytes, chatFileIds, setChatFileIds, sessionsVersion, sessionsChanged],
  );
  return <AppContext.Provider value={value}>{children}</AppContext.Provider>;
}

export function useApp(): AppContextValue {
  const value = useContext(AppContext);
  if (!value) throw new Error('useApp outside AppProvider');
  return value;
}
