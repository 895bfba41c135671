import { useI18n } from '../i18n';
import { useTheme } from '../theme';

/** Language and theme switches, on the login screen and in the top bar. */
export function Toolbar() {
  const { t, lang, setLang } = useI18n();
  const [theme, toggleTheme] = useTheme();
  return (
    <div className="toolbar">
      <button type="button" className="ghost" onClick={() => setLang(lang === 'vi' ? 'en' : 'vi')} data-testid="lang-switch">
        {t('lang.switch')}
      </button>
      <button
        type="button"
        className="ghost"
        onClick={toggleTheme}
        data-testid="theme-switch"
        aria-label={t(theme === 'dark' ? 'theme.toLight' : 'theme.toDark')}
        title={t(theme === 'dark' ? 'theme.toLight' : 'theme.toDark')}
      >
        {theme === 'dark' ? '☀' : '☾'}
      </button>
    </div>
  );
}
