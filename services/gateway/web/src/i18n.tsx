import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';

export type Lang = 'vi' | 'en';

const vi = {
  'app.title': 'Trợ lý học tập PTIT',
  'nav.chat': 'Trò chuyện',
  'nav.documents': 'Tài liệu',
  'nav.dashboard': 'Bảng theo dõi',
  'nav.logout': 'Đăng xuất',
  'nav.menu': 'Menu',
  'theme.toLight': 'Giao diện sáng',
  'theme.toDark': 'Giao diện tối',
  'lang.switch': 'English',
  'auth.login': 'Đăng nhập',
  'auth.register': 'Đăng ký',
  'auth.email': 'Email',
  'auth.password': 'Mật khẩu',
  'auth.displayName': 'Tên hiển thị',
  'auth.haveAccount': 'Đã có tài khoản? Đăng nhập',
  'auth.noAccount': 'Chưa có tài khoản? Đăng ký',
  'auth.passwordHint': 'Ít nhất 8 ký tự',
  'auth.expired': 'Phiên đăng nhập đã hết hạn. Vui lòng đăng nhập lại.',
  'auth.welcome': 'Học cùng tài liệu của bạn: hỏi đáp có trích dẫn nguồn.',
  'chat.newChat': 'Cuộc trò chuyện mới',
  'chat.newChatShortcut': 'Alt+N: cuộc trò chuyện mới',
  'chat.agent': 'Trợ lý',
  'chat.placeholder': 'Nhập câu hỏi… (Enter để gửi, Shift+Enter xuống dòng)',
  'chat.send': 'Gửi',
  'chat.stop': 'Dừng',
  'chat.copy': 'Sao chép',
  'chat.copied': 'Đã sao chép',
  'chat.regenerate': 'Tạo lại',
  'chat.stopped': 'Đã dừng.',
  'chat.empty': 'Hãy đặt câu hỏi về tài liệu của bạn.',
  'chat.backend': 'Nguồn trả lời',
  'chat.backendLlm': 'LLM: {model}',
  'chat.backendExtractive': 'Trích đoạn (không có LLM)',
  'chat.cached': 'từ bộ nhớ đệm',
  'chat.docsAll': 'Dùng tất cả tài liệu',
  'chat.docsSome': 'Dùng {count} tài liệu',
  'chat.sources': 'Nguồn',
  'chat.thinking': 'Đang trả lời…',
  'chat.you': 'Bạn',
  'chat.assistant': 'Trợ lý',
  'chat.loading': 'Đang tải tin nhắn…',
  'cite.page': 'tr.',
  'cite.title': 'Đoạn trích dẫn',
  'cite.file': 'Tệp',
  'cite.pageFull': 'Trang',
  'cite.heading': 'Mục',
  'cite.close': 'Đóng',
  'cite.openDocs': 'Xem trong Tài liệu',
  'sessions.title': 'Lịch sử',
  'sessions.untitled': 'Chưa đặt tên',
  'sessions.rename': 'Đổi tên',
  'sessions.delete': 'Xóa',
  'sessions.confirmDelete': 'Xóa cuộc trò chuyện “{title}”?',
  'sessions.save': 'Lưu',
  'sessions.cancel': 'Hủy',
  'sessions.empty': 'Chưa có cuộc trò chuyện nào.',
  'sessions.search': 'Tìm trong tin nhắn…',
  'sessions.noHits': 'Không tìm thấy.',
  'sessions.messages': '{count} tin nhắn',
  'docs.title': 'Tài liệu của bạn',
  'docs.drop': 'Kéo thả tệp vào đây hoặc',
  'docs.pick': 'chọn tệp',
  'docs.accepted': 'PDF, DOCX, PPTX, TXT, MD; tối đa {size}',
  'docs.uploading': 'Đang tải lên',
  'docs.uploaded': 'Đã tải lên',
  'docs.cancel': 'Hủy',
  'docs.empty': 'Chưa có tài liệu. Hãy tải lên bài giảng, slide hoặc ghi chú.',
  'docs.name': 'Tên',
  'docs.size': 'Dung lượng',
  'docs.status': 'Trạng thái',
  'docs.useInChat': 'Dùng khi hỏi',
  'docs.delete': 'Xóa',
  'docs.confirmDelete': 'Xóa tài liệu “{name}”?',
  'docs.useAllHint': 'Không chọn tài liệu nào: trợ lý dùng tất cả tài liệu đã sẵn sàng.',
  'docs.status.FILE_STATUS_QUEUED': 'Đang chờ xử lý',
  'docs.status.FILE_STATUS_PROCESSING': 'Đang xử lý',
  'docs.status.FILE_STATUS_READY': 'Sẵn sàng',
  'docs.status.FILE_STATUS_FAILED': 'Lỗi',
  'docs.status.FILE_STATUS_UNSPECIFIED': 'Không rõ',
  'docs.chunks': '{done}/{total} đoạn',
  'docs.rejectedType': '{name}: loại tệp không được hỗ trợ (chỉ PDF, DOCX, PPTX, TXT, MD).',
  'docs.rejectedSize': '{name}: tệp quá lớn (tối đa {size}).',
  'docs.rejectedEmpty': '{name}: tệp rỗng.',
  'dash.title': 'Bảng theo dõi hệ thống',
  'dash.window': 'Khoảng thời gian',
  'dash.latency': 'Độ trễ theo endpoint (ms)',
  'dash.throughput': 'Lưu lượng (yêu cầu/giây)',
  'dash.errorRate': 'Tỉ lệ lỗi (%)',
  'dash.history': 'Lưu lượng và lỗi theo thời gian',
  'dash.cache': 'Tỉ lệ trúng cache',
  'dash.pool': 'Kết nối DB đang dùng',
  'dash.embedding': 'Embedding',
  'dash.otherGauges': 'Chỉ số khác',
  'dash.alerts': 'Cảnh báo',
  'dash.noData': 'Chưa có dữ liệu.',
  'dash.firing': 'Đang báo',
  'dash.ok': 'Ổn',
  'dash.spans': '{spans} span, {traces} trace',
  'dash.refresh': 'Làm mới',
  'dash.unavailable': 'Dịch vụ số liệu (metrics) chưa chạy hoặc không truy cập được.',
  'err.network': 'Không kết nối được máy chủ. Kiểm tra mạng hoặc thử lại sau.',
  'err.stream': 'Luồng trả lời bị gián đoạn: {message}',
  'err.requestId': 'mã yêu cầu',
  'err.badRequest': 'Yêu cầu không hợp lệ: {message}',
  'err.unauthenticated': 'Phiên đăng nhập đã hết hạn hoặc thông tin đăng nhập sai.',
  'err.forbidden': 'Bạn không có quyền làm việc này.',
  'err.notFound': 'Không tìm thấy.',
  'err.conflict': 'Đã tồn tại: {message}',
  'err.tooLarge': 'Tệp quá lớn.',
  'err.wrongType': 'Loại tệp không được hỗ trợ.',
  'err.rateLimited': 'Bạn gửi quá nhiều yêu cầu. Vui lòng thử lại sau.',
  'err.rateLimitedRetry': 'Bạn gửi quá nhiều yêu cầu. Thử lại sau {seconds} giây.',
  'err.unavailable': 'Máy chủ tạm thời không phản hồi. Vui lòng thử lại sau.',
  'err.server': 'Lỗi máy chủ ({status}): {message}',
  'err.aborted': 'Đã hủy.',
  'err.crash': 'Đã xảy ra lỗi khi hiển thị trang.',
  'err.reload': 'Tải lại trang',
  'common.loading': 'Đang tải…',
  'common.retry': 'Thử lại',
  'common.dismiss': 'Đóng',
};

export type MessageKey = keyof typeof vi;

const en: Record<MessageKey, string> = {
  'app.title': 'PTIT Study Assistant',
  'nav.chat': 'Chat',
  'nav.documents': 'Documents',
  'nav.dashboard': 'Dashboard',
  'nav.logout': 'Log out',
  'nav.menu': 'Menu',
  'theme.toLight': 'Light theme',
  'theme.toDark': 'Dark theme',
  'lang.switch': 'Tiếng Việt',
  'auth.login': 'Log in',
  'auth.register': 'Register',
  'auth.email': 'Email',
  'auth.password': 'Password',
  'auth.displayName': 'Display name',
  'auth.haveAccount': 'Have an account? Log in',
  'auth.noAccount': 'No account yet? Register',
  'auth.passwordHint': 'At least 8 characters',
  'auth.expired': 'Your session has expired. Please log in again.',
  'auth.welcome': 'Study with your own material: answers with cited sources.',
  'chat.newChat': 'New chat',
  'chat.newChatShortcut': 'Alt+N: new chat',
  'chat.agent': 'Agent',
  'chat.placeholder': 'Ask a question… (Enter to send, Shift+Enter for a new line)',
  'chat.send': 'Send',
  'chat.stop': 'Stop',
  'chat.copy': 'Copy',
  'chat.copied': 'Copied',
  'chat.regenerate': 'Regenerate',
  'chat.stopped': 'Stopped.',
  'chat.empty': 'Ask a question about your documents.',
  'chat.backend': 'Answered by',
  'chat.backendLlm': 'LLM: {model}',
  'chat.backendExtractive': 'Extractive (no LLM)',
  'chat.cached': 'cached',
  'chat.docsAll': 'Using all documents',
  'chat.docsSome': 'Using {count} documents',
  'chat.sources': 'Sources',
  'chat.thinking': 'Answering…',
  'chat.you': 'You',
  'chat.assistant': 'Assistant',
  'chat.loading': 'Loading messages…',
  'cite.page': 'p.',
  'cite.title': 'Cited passage',
  'cite.file': 'File',
  'cite.pageFull': 'Page',
  'cite.heading': 'Section',
  'cite.close': 'Close',
  'cite.openDocs': 'Show in Documents',
  'sessions.title': 'History',
  'sessions.untitled': 'Untitled',
  'sessions.rename': 'Rename',
  'sessions.delete': 'Delete',
  'sessions.confirmDelete': 'Delete the chat “{title}”?',
  'sessions.save': 'Save',
  'sessions.cancel': 'Cancel',
  'sessions.empty': 'No chats yet.',
  'sessions.search': 'Search messages…',
  'sessions.noHits': 'Nothing found.',
  'sessions.messages': '{count} messages',
  'docs.title': 'Your documents',
  'docs.drop': 'Drop files here or',
  'docs.pick': 'choose files',
  'docs.accepted': 'PDF, DOCX, PPTX, TXT, MD; up to {size}',
  'docs.uploading': 'Uploading',
  'docs.uploaded': 'Uploaded',
  'docs.cancel': 'Cancel',
  'docs.empty': 'No documents yet. Upload lecture notes, slides or notes.',
  'docs.name': 'Name',
  'docs.size': 'Size',
  'docs.status': 'Status',
  'docs.useInChat': 'Use in chat',
  'docs.delete': 'Delete',
  'docs.confirmDelete': 'Delete the document “{name}”?',
  'docs.useAllHint': 'No document chosen: the assistant uses every ready document.',
  'docs.status.FILE_STATUS_QUEUED': 'Queued',
  'docs.status.FILE_STATUS_PROCESSING': 'Processing',
  'docs.status.FILE_STATUS_READY': 'Ready',
  'docs.status.FILE_STATUS_FAILED': 'Failed',
  'docs.status.FILE_STATUS_UNSPECIFIED': 'Unknown',
  'docs.chunks': '{done}/{total} chunks',
  'docs.rejectedType': '{name}: unsupported file type (only PDF, DOCX, PPTX, TXT, MD).',
  'docs.rejectedSize': '{name}: file too large (at most {size}).',
  'docs.rejectedEmpty': '{name}: the file is empty.',
  'dash.title': 'System dashboard',
  'dash.window': 'Window',
  'dash.latency': 'Latency per endpoint (ms)',
  'dash.throughput': 'Throughput (requests/s)',
  'dash.errorRate': 'Error rate (%)',
  'dash.history': 'Throughput and errors over time',
  'dash.cache': 'Cache hit rates',
  'dash.pool': 'DB connections in use',
  'dash.embedding': 'Embedding',
  'dash.otherGauges': 'Other figures',
  'dash.alerts': 'Alerts',
  'dash.noData': 'No data yet.',
  'dash.firing': 'Firing',
  'dash.ok': 'OK',
  'dash.spans': '{spans} spans, {traces} traces',
  'dash.refresh': 'Refresh',
  'dash.unavailable': 'The metrics service is not running or cannot be reached.',
  'err.network': 'Cannot reach the server. Check your connection or try again later.',
  'err.stream': 'The answer stream broke off: {message}',
  'err.requestId': 'request id',
  'err.badRequest': 'Invalid request: {message}',
  'err.unauthenticated': 'Your session has expired or the credentials are wrong.',
  'err.forbidden': 'You are not allowed to do this.',
  'err.notFound': 'Not found.',
  'err.conflict': 'Already exists: {message}',
  'err.tooLarge': 'The file is too large.',
  'err.wrongType': 'This file type is not supported.',
  'err.rateLimited': 'Too many requests. Please try again later.',
  'err.rateLimitedRetry': 'Too many requests. Try again in {seconds} s.',
  'err.unavailable': 'The server is temporarily unavailable. Please try again later.',
  'err.server': 'Server error ({status}): {message}',
  'err.aborted': 'Cancelled.',
  'err.crash': 'Something went wrong while showing this page.',
  'err.reload': 'Reload the page',
  'common.loading': 'Loading…',
  'common.retry': 'Retry',
  'common.dismiss': 'Dismiss',
};

export const dictionaries: Record<Lang, Record<MessageKey, string>> = { vi, en };

export function translate(lang: Lang, key: string, vars?: Record<string, string | number>): string {
  const template = dictionaries[lang][key as MessageKey] ?? dictionaries.vi[key as MessageKey] ?? key;
  return template.replace(/\{(\w+)\}/g, (whole, name: string) => (vars && name in vars ? String(vars[name]) : whole));
}

interface I18n {
  lang: Lang;
  setLang: (lang: Lang) => void;
  t: (key: string, vars?: Record<string, string | number>) => string;
}

const I18nContext = createContext<I18n | null>(null);

function initialLang(): Lang {
  try {
    return localStorage.getItem('sa.lang') === 'en' ? 'en' : 'vi';
  } catch {
    return 'vi';
  }
}

export function I18nProvider({ children }: { children: ReactNode }) {
  const [lang, setLangState] = useState<Lang>(initialLang);
  useEffect(() => {
    document.documentElement.lang = lang;
    document.title = translate(lang, 'app.title');
  }, [lang]);
  const setLang = useCallback((next: Lang) => {
    setLangState(next);
    try {
      localStorage.setItem('sa.lang', next);
    } catch {
      // not persisted: fine
    }
  }, []);
  const t = useCallback((key: string, vars?: Record<string, string | number>) => translate(lang, key, vars), [lang]);
  const value = useMemo(() => ({ lang, setLang, t }), [lang, setLang, t]);
  return <I18nContext.Provider value={value}>{children}</I18nContext.Provider>;
}

export function useI18n(): I18n {
  const value = useContext(I18nContext);
  if (!value) throw new Error('useI18n outside I18nProvider');
  return value;
}
