import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from 'react';
import type { ApiClient } from './api/client';
import type { User } from './api/types';

const SELECTION_KEY = 'sa.chatFiles';

interface AppContextValue {
  client: ApiClient;
  user: User;
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
  const value = useMemo(
    () => ({ client, user, chatFileIds, setChatFileIds, sessionsVersion, sessionsChanged }),
    [client, user, chatFileIds, setChatFileIds, sessionsVersion, sessionsChanged],
  );
  return <AppContext.Provider value={value}>{children}</AppContext.Provider>;
}

export function useApp(): AppContextValue {
  const value = useContext(AppContext);
  if (!value) throw new Error('useApp outside AppProvider');
  return value;
}
